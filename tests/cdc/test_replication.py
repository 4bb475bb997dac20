"""The replication stream against a real walsender: what it confirms to the slot, and when."""

from __future__ import annotations

import time

import psycopg2
import psycopg2.extensions

from cdc.capture import pgoutput_options
from cdc.pgoutput import Begin, Commit, Decoder, Insert
from cdc.replication import PsycopgReplicationStream, parse_lsn
from cdc.slot import create_slot, ensure_publication
from tests.cdc.conftest import SourceDB

SENDER_TIMEOUT_MS = 4000


def _bulk_slot(source: SourceDB) -> str:
    """A table `bulk` (id, pad), published, and a slot on it; returns the slot's (and publication's) name."""
    source.execute("CREATE TABLE bulk (id int PRIMARY KEY, pad text)")
    slot = source.slot_name()
    ensure_publication(source.url, slot, ["public.bulk"])
    with create_slot(source.url, slot):
        pass
    return slot


def _started(source: SourceDB, slot: str, stream: PsycopgReplicationStream) -> PsycopgReplicationStream:
    stream.start(slot, pgoutput_options(slot, server_version=source.conn.server_version))
    return stream


def _confirmed(source: SourceDB, slot: str) -> int:
    return parse_lsn(source.scalar("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                                   (slot,)))


def test_a_keepalive_inside_an_earlier_begun_transaction_confirms_nothing_unconfirmed(source: SourceDB) -> None:
    """The slot moves only to what the reader confirmed, even when the server's keepalive says more.

    Transactions reach the reader in commit order, so a transaction begun before a confirmed one
    starts with changes *below* the confirmed position. T1 begins and writes a lot; T2 and T4
    commit; T1 commits. The reader gets T2 (confirms it), T4 (does not: not yet durable
    downstream), then T1, slowly: the walsender, blocked on a full socket, asks for a reply with
    a keepalive whose WAL end is past T4. Confirming that end would drop T4 on a restart.
    """
    slot = _bulk_slot(source)
    long = psycopg2.connect(source.url)
    try:
        with long.cursor() as cur:  # T1: begun first, ~20 MB of changes, committed last
            cur.execute("INSERT INTO bulk SELECT g, repeat('x', 500) FROM generate_series(1, 40000) AS g")
        source.execute("INSERT INTO bulk VALUES (-2, 't2')")
        source.execute("INSERT INTO bulk VALUES (-4, 't4')")
        long.commit()
    finally:
        long.close()

    dsn = psycopg2.extensions.make_dsn(source.url, options=f"-c wal_sender_timeout={SENDER_TIMEOUT_MS}")
    stream = _started(source, slot, PsycopgReplicationStream(dsn, status_interval=60.0))
    decoder = Decoder()
    commits: list[int] = []
    t1_rows = 0
    try:
        deadline = time.monotonic() + 30.0
        while len(commits) < 3:
            assert time.monotonic() < deadline, f"30 s and only {len(commits)} of 3 transactions came"
            raw = stream.read(1.0)
            if raw is None:
                continue
            message = decoder.feed(raw.payload)
            if isinstance(message, Commit):
                commits.append(message.end_lsn)
                if len(commits) == 1:
                    stream.send_feedback(message.end_lsn)  # T2 is durable downstream; T4 will not be
            elif isinstance(message, Begin) and len(commits) == 2:
                # T1's first message, below T2's end. Stop reading until the server has had
                # to ask for a reply (it does at half its timeout) and is still waiting for it.
                time.sleep(SENDER_TIMEOUT_MS / 1000 * 0.7)
            elif isinstance(message, Insert) and len(commits) == 2:
                t1_rows += 1
        t2_end, t4_end, _t1_end = commits
        assert t1_rows == 40000
        time.sleep(0.5)  # let the walsender read the replies sent while T1 streamed
        assert _confirmed(source, slot) <= t2_end < t4_end
        assert stream.reply_requests > 0, "the server never asked for a reply: the test did not set up its case"
    finally:
        stream.close()


def test_status_updates_go_out_every_interval_while_data_streams(source: SourceDB) -> None:
    """A long transaction moves no confirmed position for a while; the server still hears from the reader."""
    slot = _bulk_slot(source)
    source.execute("INSERT INTO bulk SELECT g, repeat('x', 100) FROM generate_series(1, 10000) AS g")
    stream = _started(source, slot, PsycopgReplicationStream(source.url, status_interval=0.05))
    decoder = Decoder()
    replies: set[object] = set()
    rows = 0
    try:
        deadline = time.monotonic() + 30.0
        while rows < 10000:
            assert time.monotonic() < deadline, f"30 s and only {rows} rows came"
            raw = stream.read(1.0)
            if raw is None:
                continue
            if isinstance(decoder.feed(raw.payload), Insert):
                rows += 1
                time.sleep(0.0003)  # slower than the server: its messages are always waiting, the reader never idles
                if rows % 500 == 0:
                    replies.add(source.scalar("SELECT reply_time FROM pg_stat_replication WHERE pid = "
                                              "(SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s)", (slot,)))
        # Replies the server asked for do not count: the reader sent the others of its own accord.
        assert len(replies - {None}) >= 5 + stream.reply_requests, (replies, stream.reply_requests)
    finally:
        stream.close()


def test_an_idle_slot_moves_on_with_the_keepalives_once_everything_read_is_confirmed(source: SourceDB) -> None:
    slot = _bulk_slot(source)
    source.execute("CREATE TABLE other (id int PRIMARY KEY)")
    source.execute("INSERT INTO bulk VALUES (1, 'ours')")
    stream = _started(source, slot, PsycopgReplicationStream(source.url, status_interval=0.2))
    decoder = Decoder()
    try:
        ours = None
        deadline = time.monotonic() + 30.0
        while ours is None:
            assert time.monotonic() < deadline, "our transaction did not come"
            raw = stream.read(1.0)
            if raw is not None and isinstance(message := decoder.feed(raw.payload), Commit):
                ours = message.end_lsn
        stream.send_feedback(ours)
        for i in range(20):  # WAL of a table the slot does not publish: nothing of it is sent
            source.execute("INSERT INTO other VALUES (%s)", (i,))
        past = parse_lsn(source.scalar("SELECT pg_current_wal_insert_lsn()::text"))
        assert past > ours
        deadline = time.monotonic() + 20.0
        while _confirmed(source, slot) < past:
            assert time.monotonic() < deadline, f"the slot stayed at {_confirmed(source, slot)}, below {past}"
            stream.read(0.2)  # keepalives, nothing for this slot
        assert stream.keepalives > 0
    finally:
        stream.close()
