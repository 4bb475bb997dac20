"""The write switch: `strangler cutover writes PLAN` and `strangler cutover rollback PLAN --writes`.

One switch moves the plan's write routes (`writes.routes`) from the side that writes now to the
other, with a pause bounded by `writes.budget` at the façade and no write lost. Every step is
journaled (`writes.start`, `writes.step` with `phase` intent/done, `writes.end`) before it acts;
inside the pause a step's `done` is written in the transaction of the next step's `intent` (three
commits in all), and the events (the plan's events file and notify hook) wait until it ends:

1. **preflight**: the routes go all to the old writer and carry no hold; every replica serves the
   file; the forward stream (`sync:`) and the reverse stream (`writes.reverse_sync`) run, within
   the cdc gate's lag and dead letters; verify is clean;
2. **estimate** the pause from what is measured now: the routes' in-flight p99 (the drain), one
   probe fence through the stream that must catch up (the fence), one reload of every replica,
   and the journal's own writes; refused (with the numbers) when over the budget. `--dry-run`
   stops here;
3. **hold**: `hold: {id, until, budget}` on the write routes (`facade.hold_edit`), reloaded on
   every replica; wait until each replica **acks** it (every worker has it installed and its
   in-flight requests on those routes have finished) — else release and abort;
4. **fence**: a position of the old writer's database taken after all acks (a logical message,
   `cdc.fence.emit_fence`); wait until the stream into the new writer has applied it;
5. **ownership**: the forward applier applies only legacy-owned columns from the fence on
   (`cdc.fence.set_ownership`), or, switching back, everything again;
6. **reverse**: (forward only) the reverse stream's start position on the service store, taken
   while every write is held: every service write after the release is after it;
7. **switch and release** in one write of the routing file (`clear_hold(weights=...)`): each
   worker goes from held to released-on-the-new-weights in one reload;
8. **verify** both directions once both streams have caught up.

A failure before step 7 releases the holds to the old writer and undoes step 5, leaving
everything as it was. Killed anywhere, the next `cutover writes` (or `rollback --writes`) finds
the unfinished switch in the journal: if the file shows the switch it finishes it (verify);
otherwise it undoes it (the hold, if its lease has not ended, is cleared) and then starts again.

## Why no acknowledged write can be missing after the switch (the fence argument)

A write is acknowledged when the old writer answered it, and the old writer answers only after
its transaction committed. A replica acks the hold only once every write request it had let
through has finished, and from the hold's installation on it lets none through; so once every
replica has acked, every acknowledged write through the façade committed before the fence, which
is taken after the last ack. The new writer receives its first request only when the hold is
released, after the stream into it applied everything up to the fence: at that moment it holds
every acknowledged write. Its own writes after the release are after the reverse start position,
so the reverse stream carries each of them to the other side; the appliers' replication origins
keep either stream from carrying back what the other wrote. The forward stream stops writing the
service-owned columns from the fence on, so a legacy change committed after the fence (no
longer a façade write: those are held or go to the service) cannot overwrite a service write; it
is recorded as a conflict. The held requests are released only by the file that switches the
routes, so none can reach the old writer; a runner that dies leaves a hold whose lease ends by
itself, and nothing switched.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlencode

import psycopg2

from cdc.database import Connections
from cdc.exceptions import CDCError
from cutover.exceptions import CutoverError
from cutover.gates import expected_drain
from cutover.journal import Entry, JournalStore, MemoryJournal, new_holder, open_journal
from cutover.plan import Plan
from cutover.readings import Sources, parse_traffic
from cutover.runner import _emit, file_hash
from facade.config import ConfigError, load_config
from facade.exceptions import FacadeError
from facade.hold_edit import clear_hold, prepare_switch

__all__ = ["CRASH_ENV", "STEPS", "WriteSwitch", "WriteSwitchResult", "switch_writes", "writes_state"]

Direction = Literal["forward", "back"]
STEPS = ("preflight", "estimate", "hold", "acks", "fence", "ownership", "reverse", "switch", "verify")
CRASH_ENV = "STRANGLER_CUTOVER_CRASH_AT"
"""Crash testing: `step:phase` (e.g. `fence:intent`) makes the runner SIGKILL itself right after
journaling it, so a test can resume from exactly that point."""
PROBES = 5
"""Timings of each part of the pause estimate."""
DRAIN_WINDOW = 1.0
"""Seconds of write traffic, at least, the estimate measures the drain on."""
_POLL = 0.005
"""Seconds between polls inside the pause (acks, fence, replicas serving the switch)."""


@dataclass
class WriteSwitchResult:
    """How one write switch ended, its estimate, the pause measured and the timeline."""

    direction: str
    outcome: str = "refused"
    """`switched`, `already` (nothing to do), `aborted` (released to the old writer), `refused`
    (preflight or estimate said no; nothing was held), `estimated` (`--dry-run`)."""
    reason: str = ""
    estimate: dict[str, Any] = field(default_factory=dict)
    pause_s: float | None = None
    hold_id: str | None = None
    fence: dict[str, Any] = field(default_factory=dict)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    verify: dict[str, Any] = field(default_factory=dict)
    recovered: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "direction": self.direction, "outcome": self.outcome, "reason": self.reason, "estimate": self.estimate,
            "pause_s": self.pause_s, "hold_id": self.hold_id, "fence": self.fence, "timeline": self.timeline,
            "checks": self.checks, "verify": self.verify, "recovered": self.recovered,
        }

    @property
    def ok(self) -> bool:
        return self.outcome in ("switched", "already", "estimated")


@dataclass(frozen=True)
class _Streams:
    """The two sync specs and what the switch reads of them."""

    forward: Any
    reverse: Any

    @property
    def legacy_url(self) -> str:
        return str(self.forward.source_url)

    @property
    def service_url(self) -> str:
        return str(self.forward.target_url)


def writes_state(entries: Sequence[Entry]) -> dict[str, Any]:
    """Where the writes stand from the journal: the writer now, the last switch, an unfinished one."""
    writer = "old"
    last: dict[str, Any] | None = None
    open_start: Entry | None = None
    steps: list[Entry] = []
    for entry in entries:
        if entry.kind == "writes.start":
            open_start, steps = entry, []
        elif entry.kind == "writes.step" and open_start is not None:
            steps.append(entry)
        elif entry.kind == "writes.end":
            detail = entry.detail
            if detail.get("outcome") == "switched":
                writer = "target" if detail.get("direction") == "forward" else "old"
            last = {"at": entry.at, **detail}
            open_start, steps = None, []
        elif entry.kind == "writes.finished":
            writer = "target"
            last = {"at": entry.at, "outcome": "finished", **entry.detail}
    return {
        "writer": writer,
        "last": last,
        "unfinished": None if open_start is None else {
            "start": open_start.detail, "id": open_start.id,
            "steps": [(item.detail.get("step"), item.detail.get("phase"), item.detail) for item in steps],
        },
    }


class WriteSwitch:
    """One write switch of a plan, journaled; `run()` does it (or recovers an unfinished one first)."""

    def __init__(
        self,
        plan: Plan,
        journal: JournalStore,
        sources: Sources,
        *,
        direction: Direction = "forward",
        dry_run: bool = False,
        env: Mapping[str, str] | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if plan.writes is None:
            raise CutoverError(f"plan {plan.name!r} has no writes: section; add writes: {{routes: [...], budget: 1s, reverse_sync: ...}}")
        if plan.sync is None or plan.writes.reverse_sync is None:
            raise CutoverError("the write switch needs both streams: set sync: (forward) and writes.reverse_sync: (reverse) in the plan")
        self.plan = plan
        self.writes = plan.writes
        self.journal = journal
        self.sources = sources
        self.direction: Direction = direction
        self.dry_run = dry_run
        self.env = dict(os.environ if env is None else env)
        self.on_event = on_event
        self.clock = clock
        self.result = WriteSwitchResult(direction)
        self._t0 = clock()
        self._streams: _Streams | None = None
        self._unwritten: list[tuple[str, dict[str, Any]]] = []
        """Journal entries of steps done, to be written with the next step's entry (`_step(later=True)`)."""
        self._held_events: list[dict[str, Any]] | None = None
        self._ownership_intent: dict[str, Any] | None = None
        self._conns = Connections()
        """The switch's database connections, opened by the estimate's probes and reused inside
        the pause: a new connection is a new server process, which a busy host starts slowly."""

    # -- sides ----------------------------------------------------------------------------------

    def _weights(self) -> dict[str, dict[str, float]]:
        try:
            config = load_config(self.plan.routing, env=self.env)
        except ConfigError as exc:
            raise CutoverError(f"the routing file does not load: {exc.problems[0]}") from exc
        routes = {route.id: route for route in config.routes}
        missing = [name for name in self.writes.routes if name not in routes]
        if missing:
            raise CutoverError(f"write route(s) {', '.join(missing)} are not in {self.plan.routing}; add them or fix writes.routes")
        out = {}
        for name in self.writes.routes:
            route = routes[name]
            if self.plan.target not in route.to:
                raise CutoverError(f"write route {name!r} does not list {self.plan.target!r} under to:; add it with weight 0")
            out[name] = {upstream: float(weight) for upstream, weight in route.to.items()}
        return out

    def _old_upstream(self, weights: Mapping[str, Mapping[str, float]]) -> str:
        first = weights[self.writes.routes[0]]
        others = [name for name in first if name != self.plan.target]
        if len(others) != 1:
            raise CutoverError(f"write route {self.writes.routes[0]!r} must name exactly two upstreams (the old writer and {self.plan.target})")
        return others[0]

    def _sides(self) -> tuple[str, str]:
        """(upstream that writes now, upstream that will) for this direction."""
        old = self._old_upstream(self._weights())
        return (old, self.plan.target) if self.direction == "forward" else (self.plan.target, old)

    def _streams_now(self) -> _Streams:
        if self._streams is None:
            from cdc.exceptions import CDCError
            from cdc.spec import load_spec

            try:
                forward = load_spec(self.plan.sync, env=self.env)
            except CDCError as exc:
                raise CutoverError(f"the forward sync spec does not load: {exc}") from exc
            try:
                reverse = load_spec(self.writes.reverse_sync, env=self.env)
            except CDCError as exc:
                raise CutoverError(f"the reverse sync spec ({self.writes.reverse_sync}) does not load: {exc}") from exc
            for spec, what in ((forward, "forward"), (reverse, "reverse")):
                if not spec.source_url or not spec.target_url:
                    raise CutoverError(f"the {what} sync spec {spec.path} needs both database URLs (source.url, target.url)")
            self._streams = _Streams(forward, reverse)
        return self._streams

    def _catching_up(self) -> tuple[Any, Any]:
        """(spec of the stream into the new writer, spec of the other) for this direction."""
        streams = self._streams_now()
        return (streams.forward, streams.reverse) if self.direction == "forward" else (streams.reverse, streams.forward)

    # -- journal and timeline -------------------------------------------------------------------

    def _event(self, kind: str, **detail: Any) -> None:
        event = {"event": kind, "plan": self.plan.name, "direction": self.direction, "at": self.clock(), **detail}
        if self._held_events is not None:
            self._held_events.append(event)  # inside the pause: sent once it ends (a notify hook is a process)
            return
        self._send_event(event)

    def _send_event(self, event: dict[str, Any]) -> None:
        if not self.dry_run:
            _emit(self.plan, event)
        if self.on_event is not None:
            self.on_event(event)

    def _step(self, step: str, phase: str, *, later: bool = False, **detail: Any) -> None:
        """Journal a step (with `later`, in the same transaction as the next step's entry: a record
        of something done, not the intent of something about to be done) and send its event."""
        now = self.clock()
        record = {"step": step, "phase": phase, "at": now, "elapsed_ms": round((now - self._t0) * 1000, 1), **detail}
        if phase == "done":
            self.result.timeline.append(record)
        if not self.dry_run:
            crash = os.environ.get(CRASH_ENV) == f"{step}:{phase}"
            if later and crash:
                os.kill(os.getpid(), signal.SIGKILL)  # crash testing: die where this entry waits for the next
            self._unwritten.append(("writes.step", {"detail": {"direction": self.direction, **record}}))
            if not later:
                self._write_unwritten()
            if crash:
                os.kill(os.getpid(), signal.SIGKILL)  # crash testing: die right after journaling this step
        self._event(f"writes.{step}.{phase}", **detail)

    def _write_unwritten(self) -> None:
        if self._unwritten:
            entries, self._unwritten = self._unwritten, []
            self.journal.write_many(entries)

    def _hold_events(self) -> None:
        """From now until `_send_held_events`, events wait: the pause is on."""
        if self._held_events is None:
            self._held_events = []

    def _send_held_events(self) -> None:
        events, self._held_events = self._held_events or [], None
        for event in events:
            self._send_event(event)

    def _end(self, outcome: str, reason: str) -> WriteSwitchResult:
        self.result.outcome, self.result.reason = outcome, reason
        if not self.dry_run:
            self._write_unwritten()
            self.journal.write("writes.end", detail={
                "direction": self.direction, "outcome": outcome, "reason": reason, "hold_id": self.result.hold_id,
                "pause_s": self.result.pause_s, "estimate_s": self.result.estimate.get("pause_s"),
            })
        self._send_held_events()
        self._event("writes.end", outcome=outcome, reason=reason, pause_s=self.result.pause_s)
        return self.result

    # -- the procedure --------------------------------------------------------------------------

    def run(self) -> WriteSwitchResult:
        try:
            return self._run()
        finally:
            try:
                if not self.dry_run and self._unwritten:
                    try:
                        self._write_unwritten()
                    except CutoverError:
                        pass  # the journal is what failed; its intents are what recovery reads
                self._send_held_events()
            finally:
                self._conns.close()

    def _run(self) -> WriteSwitchResult:
        if not self.dry_run:
            recovered = self._recover()
            if recovered is not None:
                self.result.recovered = recovered
                if recovered == f"finished the {self.direction} switch a stopped runner had made":
                    self.result.outcome, self.result.reason = "switched", recovered
                    self._event("writes.end", outcome="switched", reason=recovered, pause_s=None)
                    return self.result
        old, new = self._sides()
        weights = self._weights()
        if all(w.get(new, 0.0) >= 100.0 for w in weights.values()):
            return self._end("already", f"the write routes already go all to {new}")
        if not self.dry_run:
            self.journal.write("writes.start", detail={"direction": self.direction, "old": old, "new": new,
                                                      "routes": list(self.writes.routes)})
        checks = self._preflight(old, new, weights)
        self.result.checks = checks
        failed = [check for check in checks if check["status"] == "failed"]
        if failed:
            return self._end("refused", "preflight: " + "; ".join(f"{c['name']}: {c['detail']}" for c in failed))
        estimate = self._estimate(old, new)
        self.result.estimate = estimate
        self._step("estimate", "done", **estimate)
        budget = self.writes.budget
        if estimate["pause_s"] > budget:
            parts = ", ".join(f"{name} {value * 1000:.0f} ms" for name, value in estimate["parts"].items())
            return self._end("refused", f"the estimated pause {estimate['pause_s'] * 1000:.0f} ms ({parts}) exceeds the budget "
                                        f"of {budget * 1000:.0f} ms; wait for less lag or load, or raise writes.budget")
        if self.dry_run:
            return self._end("estimated", f"would hold {', '.join(self.writes.routes)} for about "
                                          f"{estimate['pause_s'] * 1000:.0f} ms of a {budget * 1000:.0f} ms budget and switch them to {new}")
        return self._switch(old, new, estimate)

    def _switch(self, old: str, new: str, estimate: Mapping[str, Any]) -> WriteSwitchResult:
        budget = self.writes.budget
        hold_id = f"{self.plan.name}-{self.direction}-{int(self.clock() * 1000)}"
        self.result.hold_id = hold_id
        lease = max(2 * budget, budget + 3.0)
        into, _other = self._catching_up()
        ownership_set: dict[str, Any] | None = None
        target_weights = self._all_to(new)
        try:
            # Both edits of the file, computed and validated now: inside the pause each is a compare and a write.
            try:
                prepared = prepare_switch(self.plan.routing, self.writes.routes, hold_id, lease=lease, budget=budget,
                                          weights=target_weights, env=self.env)
            except (ConfigError, FacadeError) as exc:
                raise _Abort(f"cannot place the hold: {exc}") from exc
            try:
                self._conns.check()  # one the server dropped since the estimate is reopened now, not in the pause
            except CDCError as exc:
                raise _Abort(f"cannot reach a database before the hold: {exc}") from exc
            self._step("hold", "intent", hold_id=hold_id, lease_s=lease, budget_s=budget)
            # Inside the pause three journal transactions: [hold, acks done, fence intent], [fence
            # done, ownership intent], [ownership done, reverse done, switch intent]. Events wait.
            self._hold_events()
            try:
                placed = prepared.place()
            except FacadeError as exc:
                raise _Abort(f"cannot place the hold: {exc}") from exc
            self._reload_all()
            held_at = self.clock()
            self._step("hold", "done", later=True, hold_id=hold_id, until=placed.until)
            switching = estimate["parts"]["edit"] + estimate["parts"]["reload"]
            ack_deadline = held_at + max(0.25 * budget, budget - estimate["parts"]["fence"] - switching)
            acks = self._wait_acks(hold_id, ack_deadline)
            self._step("acks", "done", later=True, **acks)

            self._step("fence", "intent")
            from cdc.exceptions import CDCError
            from cdc.fence import emit_fence, wait_applied

            try:
                lsn = emit_fence(into.source_url, hold_id, conn=self._conns.get(into.source_url))
                remaining = held_at + budget - switching - self.clock()
                waited = wait_applied(into.target_url, into.name, lsn, max(0.05, remaining),
                                      conn=self._conns.get(into.target_url, autocommit=True))
            except CDCError as exc:
                raise _Abort(f"fence: {exc}") from exc
            self.result.fence = {"lsn": lsn, "waited_s": round(waited, 4), "database": "legacy" if self.direction == "forward" else "service"}
            self._step("fence", "done", later=True, lsn=lsn, waited_s=round(waited, 4))

            try:
                ownership_set = self._ownership(lsn)
                if self.direction == "forward":
                    self._reverse_position()
            except (CDCError, psycopg2.Error) as exc:
                raise _Abort(f"{'ownership' if ownership_set is None else 'reverse position'}: {exc}") from exc

            if self.clock() > placed.until - max(0.2, 0.25 * budget):
                raise _Abort("the hold's lease is about to end before the switch; nothing was switched")
            self._step("switch", "intent", weights=target_weights)
        except _Abort as exc:
            # An ownership row journaled but not known to be written is undone too (undoing one never written changes nothing).
            self._release_to_old(hold_id, ownership_set or self._ownership_intent)
            return self._end("aborted", f"{exc}; the holds were released to {old} and nothing was switched")
        try:
            try:
                prepared.switch()
            except FacadeError:
                # The file is not the one with our hold any more (someone edited it meanwhile): edit what is there.
                clear_hold(self.plan.routing, hold_id, weights=target_weights, env=self.env)
        except (ConfigError, FacadeError) as exc:
            self._release_to_old(hold_id, ownership_set)
            return self._end("aborted", f"cannot write the switch: {exc}; the holds were released to {old}")
        self._reload_all()
        served = self._wait_served()
        self._step("switch", "done", served=served)
        self._send_held_events()
        self.result.pause_s = self._measured_pause(hold_id)
        self._verify_both()
        return self._end("switched", f"{', '.join(self.writes.routes)} now go to {new}")

    # -- preflight and estimate -------------------------------------------------------------------

    def _preflight(self, old: str, new: str, weights: Mapping[str, Mapping[str, float]]) -> list[dict[str, Any]]:
        checks: list[dict[str, Any]] = []

        def check(name: str, ok: bool | None, detail: str) -> None:
            checks.append({"name": name, "status": "ok" if ok else "failed" if ok is False else "warning", "detail": detail})

        for route, shares in weights.items():
            check(f"route {route}", shares.get(old, 0.0) >= 100.0,
                  f"{old} {shares.get(old, 0):g}%, {new} {shares.get(new, 0):g}%" +
                  ("" if shares.get(old, 0.0) >= 100.0 else f"; a write switch starts from all writes on {old}"))
        config = load_config(self.plan.routing, env=self.env)
        held = [route.id for route in config.routes if route.id in self.writes.routes and route.hold is not None]
        check("no hold", not held, "none" if not held else f"{', '.join(held)} already held; wait for its lease to end or clear it")
        expected = file_hash(self.plan.routing)
        try:
            states = self.sources.replicas()
            lagging = [f"{s.url} serves {s.content_hash}" for s in states if s.content_hash != expected]
            check("replicas", not lagging, f"{len(states)} replica(s) serve {expected}" if not lagging else
                  f"{'; '.join(lagging)}, not {expected}; wait for them to reload or fix them")
            for replica in self.plan.facade.replicas:
                response = self.sources.admin.get(replica, "hold")
                if response.status_code != 200:
                    check(f"hold endpoint {replica}", False, f"GET /_strangler/hold answered {response.status_code}; update the façade")
        except CutoverError as exc:
            check("replicas", False, str(exc))
        streams = self._streams_now()
        gate = self.plan.gates.cdc
        max_lag = gate.max_lag if gate is not None else 5.0
        max_dead = gate.max_dead_letters if gate is not None else 0
        from cdc.exceptions import CDCError
        from cdc.status import status

        for spec, what in ((streams.forward, "forward"), (streams.reverse, "reverse")):
            try:
                state = status(spec)
            except CDCError as exc:
                check(f"{what} stream", False, f"{exc}")
                continue
            running = state.slot_exists and state.slot_active
            check(f"{what} stream", running, (f"slot {state.slot} active" if running else
                  f"slot {state.slot} {'inactive' if state.slot_exists else 'missing'}; start it: "
                  f"strangler cdc run --spec {spec.path}"))
            must_be_current = what == "forward" or self.direction == "back"
            if must_be_current:
                lag = state.lag_seconds
                if lag is None:  # nothing streamed since the snapshot: the estimate's probe fence tells
                    check(f"{what} lag", True, f"idle since its snapshot ({state.lag_bytes or 0} bytes behind)")
                elif lag <= max_lag or not running:
                    check(f"{what} lag", lag <= max_lag, f"{lag:.3f}s (limit {max_lag:g}s)")
                else:
                    check(f"{what} lag", *self._probe_lag(spec, lag, max_lag))
            check(f"{what} dead letters", state.dead_letters <= max_dead,
                  f"{state.dead_letters} (limit {max_dead}); look at them with strangler cdc status --spec {spec.path}")
        for item in _replica_identity(streams, list(self.writes.ownership)):
            check("replica identity", item[1], item[2])
        for spec, what in ((streams.forward, "forward"), (streams.reverse, "reverse")):
            if what == "reverse" and self.direction == "forward":
                continue  # nothing to compare yet: the service has written nothing of its own
            identical, summary = self._verify(spec)
            check(f"verify {what}", identical, summary)
        for item in checks:
            self._step("preflight", "check", **item)
        self._step("preflight", "done", failed=sum(1 for c in checks if c["status"] == "failed"))
        return checks

    def _probe_lag(self, spec: Any, lag: float, max_lag: float) -> tuple[bool, str]:
        """Whether a stream whose last applied change is `lag` seconds old is really that far behind.

        The age of the last applied change overstates the lag of a stream whose source writes are
        all the other direction's (after a switch, every catalog write reaches legacy by the reverse
        stream and the forward stream, filtering them by origin, applies nothing between two
        heartbeats). A fence written now and applied within the limit shows the stream current."""
        from cdc.exceptions import CDCError
        from cdc.fence import fence_through

        try:
            taken = fence_through(spec, f"{self.plan.name}-preflight", max_lag)
        except CDCError as exc:
            return False, f"{lag:.3f}s (limit {max_lag:g}s), and a probe fence did not get through: {exc}"
        return True, (f"{taken:.3f}s by a probe fence (limit {max_lag:g}s; its last applied change is {lag:.1f}s old: "
                      "the source's writes since are the other direction's)")

    def _verify(self, spec: Any) -> tuple[bool, str]:
        from cdc.exceptions import CDCError
        from cdc.verify import verify

        wait = self.plan.gates.verify.wait if self.plan.gates.verify is not None else 30.0
        try:
            result = verify(spec, wait=wait, steady=True)  # writes go on while it compares
        except CDCError as exc:
            return False, f"verify: {exc}"
        parts = [f"{t.target}: {t.matching} identical" + (f" ({t.transient} in flight while compared)" if t.transient else "")
                 if t.identical else
                 f"{t.target}: {t.mismatched} mismatched, {t.only_in_source} only in source, {t.only_in_target} only in target"
                 for t in result.tables]
        return result.identical, "; ".join(parts)

    def _write_traffic(self) -> Any:
        """The write routes' traffic summed over the replicas now (None where one is unreadable)."""
        from cutover.gates import RouteTraffic

        total = RouteTraffic()
        for replica in self.plan.facade.replicas:
            try:
                response = self.sources.admin.get(replica, "metrics")
            except CutoverError:
                return None
            total = total.plus(parse_traffic(response.text, tuple(self.writes.routes)))
        return total

    def _estimate(self, old: str, new: str) -> dict[str, Any]:
        """The pause: drain + acks + fence (a probe now) + steps + edit + reload (of every replica) + journal.

        The drain is how long the writes in flight when the hold lands take to finish, the last of
        them. Each replica measures it on its own write requests while the probes other than the
        reloads run (at least `DRAIN_WINDOW` seconds; not during the preflight, whose verify loads
        both databases, nor an earlier switch's held waits), `GET /_strangler/drain`, and the
        slowest replica's counts. Each replica's is the lesser of two measured bounds: the mean
        drain with new writes arriving all along (the hold stops them, so the writes in flight
        finish no later), and the mean number in flight times the time the fastest tenth of the
        writes take (the writes in flight done one after another, as by one busy monolith: on a
        saturated host the first bound counts the queue that the hold removes). Where a replica
        cannot tell (fewer than 20 writes in the window, or a façade without that endpoint),
        `expected_drain` of the write rate and latencies its metrics counted stands in; that model
        takes every write for independent of the others, which on a busy host, where latencies are
        mostly queueing, overstates the drain by up to the harmonic number of the writes in flight.

        The acks are one round of hold reports, and the polling's half-interval when a write is in
        flight as the hold lands (`_ack_wait`: the wait notices the drain at a later round). The
        probes are each the median of `PROBES` timings. The pause holds one whole reload (the
        switch's) and the tail of the hold's own (from the first worker that holds to the last;
        counted as half a reload), so the reload part is one and a half reloads."""
        start, started_at = self._write_traffic(), self.clock()
        into, _ = self._catching_up()
        from cdc.exceptions import CDCError
        from cdc.fence import fence_through

        gate = self.plan.gates.cdc

        def fence_once() -> None:
            fence_through(into, f"{self.plan.name}-probe", gate.max_lag if gate is not None else 5.0, connections=self._conns)

        try:
            fence = self._median_time(fence_once)
        except CDCError as exc:
            raise CutoverError(f"the probe fence did not get through the stream into the new writer: {exc}") from exc
        try:
            # The switch writes the file inside the pause (prepared ahead: a compare and a write): time one such write.
            prepared = prepare_switch(self.plan.routing, self.writes.routes, f"{self.plan.name}-estimate", lease=1.0,
                                      budget=self.writes.budget, weights=self._all_to(new),
                                      env=self.env)
            edit = self._median_time(prepared.rehearse)
        except (ConfigError, FacadeError) as exc:
            raise CutoverError(f"the routing file cannot take the hold: {exc}") from exc
        report = self._median_time(lambda: self._hold_reports(f"{self.plan.name}-probe"))
        journal = self._median_time(self._probe_journal) * 3  # the journal's transactions inside the pause (see _switch)
        try:
            steps = self._median_time(self._probe_steps)
        except CDCError as exc:
            raise CutoverError(f"the ownership probe failed on the service store: {exc}") from exc
        left = DRAIN_WINDOW - (self.clock() - started_at)
        if left > 0:
            time.sleep(left)
        drain, readings = self._measured_drain(self.clock() - started_at)
        drain_from = "measured at the façade"
        if drain is None:
            drain, drain_from = 0.0, "modelled from the latency histogram"
            now, seconds = self._write_traffic(), self.clock() - started_at
            if now is not None and seconds > 0:
                recent = now.minus(start).of(old) if start is not None else now.of(old)
                latencies = recent.buckets if recent.requests >= 20 else now.of(old).buckets
                drain = expected_drain(recent.requests / seconds, latencies)
        acks = _ack_wait(report, readings)
        # Last, out of the drain's window: a reload stalls the writes in flight while it runs, and
        # the hold's writes drain after the hold's reload has been served.
        reload = self._median_time(lambda: self._reload_all(force=True)) * 1.5
        parts = {"drain": round(drain, 4), "acks": round(acks, 4), "fence": round(fence, 4), "steps": round(steps, 4),
                 "edit": round(edit, 4), "reload": round(reload, 4), "journal": round(journal, 4)}
        return {"pause_s": round(sum(parts.values()), 4), "budget_s": self.writes.budget, "parts": parts,
                "drain_from": drain_from, "drain_readings": readings}

    def _measured_drain(self, seconds: float) -> tuple[float | None, list[dict[str, Any]]]:
        """The slowest replica's drain of the write routes over the last `seconds` (`GET
        /_strangler/drain`; see `_estimate`), None when a replica does not measure it or saw too
        few writes; with what each replica answered."""
        query = urlencode([*(("route", route) for route in self.writes.routes), ("seconds", f"{min(seconds, 60.0):.3f}")])
        drains: list[float] = []
        readings: list[dict[str, Any]] = []
        for replica in self.plan.facade.replicas:
            try:
                response = self.sources.admin.get(replica, f"drain?{query}")
            except CutoverError:
                return None, readings
            body = response.json() if response.status_code == 200 else {}
            readings.append({key: body.get(key) for key in ("drain_s", "inflight", "fastest_s", "requests", "seconds")})
            if body.get("drain_s") is None or int(body.get("requests") or 0) < 20:
                return None, readings
            drain = float(body["drain_s"])
            if body.get("inflight") is not None and body.get("fastest_s") is not None:
                drain = min(drain, float(body["inflight"]) * float(body["fastest_s"]))
            drains.append(drain)
        return max(drains, default=None), readings

    def _all_to(self, new: str) -> dict[str, dict[str, float]]:
        """The write routes' weights after the switch: everything to `new`."""
        return {route: {new: 100.0} for route in self.writes.routes}

    def _median_time(self, probe: Callable[[], None], times: int = PROBES) -> float:
        """The median of `times` timings of `probe`: one sample on a busy machine is mostly noise."""
        taken = []
        for _ in range(times):
            started = self.clock()
            probe()
            taken.append(self.clock() - started)
        return sorted(taken)[len(taken) // 2]

    def _probe_journal(self) -> None:
        """One journal transaction (its events are sent after the pause)."""
        if not self.dry_run:
            self.journal.write("writes.step", detail={"direction": self.direction, "step": "estimate", "phase": "probe"})

    def _probe_steps(self) -> None:
        """The pause's ownership and reverse steps, writing nothing: the ownership row's locks and
        flushed commit, then (forward) the reverse slot's position or (back) the ownership fence."""
        from cdc.fence import emit_fence, probe_ownership
        from cdc.slot import slot_name, slot_state

        streams = self._streams_now()
        probe_ownership(streams.service_url, streams.forward.name, conn=self._conns.get(streams.service_url))
        if self.direction == "forward":
            slot_state(streams.service_url, slot_name(streams.reverse.name),
                       conn=self._conns.get(streams.service_url, autocommit=True))
        else:
            emit_fence(streams.legacy_url, f"{self.plan.name}-probe", conn=self._conns.get(streams.legacy_url))

    # -- façade ---------------------------------------------------------------------------------

    def _reload_all(self, *, force: bool = False) -> None:
        """POST /_strangler/reload to every replica: the switch does not wait for file watching."""
        for replica in self.plan.facade.replicas:
            try:
                response = self.sources.admin.post(replica, "reload")
            except CutoverError:
                if force:
                    raise
                continue  # watching the file takes over; the waits below notice a replica that does not
            if response.status_code == 422:
                problems = response.json().get("problems") or ["(no detail)"]
                raise _Abort(f"the façade replica {replica} rejected the routing file: {problems[0]}")

    def _hold_reports(self, hold_id: str) -> dict[str, dict[str, Any] | None]:
        reports: dict[str, dict[str, Any] | None] = {}
        for replica in self.plan.facade.replicas:
            try:
                response = self.sources.admin.get(replica, f"hold?id={hold_id}")
            except CutoverError:
                reports[replica] = None
                continue
            holds = response.json().get("holds", []) if response.status_code == 200 else []
            reports[replica] = holds[0] if holds else None
        return reports

    def _wait_acks(self, hold_id: str, deadline: float) -> dict[str, Any]:
        while True:
            reports = self._hold_reports(hold_id)
            missing = {replica: report for replica, report in reports.items() if not (report and report.get("acked"))}
            if not missing:
                held = sum(int(report.get("held") or 0) for report in reports.values() if report)
                return {"replicas": len(reports), "held": held,
                        "oldest_wait_s": max(float(report.get("oldest_wait") or 0) for report in reports.values() if report)}
            if self.clock() >= deadline:
                parts = []
                for replica, report in missing.items():
                    if report is None:
                        parts.append(f"{replica}: no answer or the hold is not installed")
                    else:
                        workers = report.get("workers", {})
                        parts.append(f"{replica}: {workers.get('installed')}/{workers.get('expected')} workers installed, "
                                     f"{workers.get('drained')} drained, {report.get('inflight')} in flight")
                raise _Abort(f"not every replica acked the hold in time ({'; '.join(parts)})")
            time.sleep(_POLL)

    def _wait_served(self) -> dict[str, str]:
        expected = file_hash(self.plan.routing)
        deadline = self.clock() + self.plan.facade.reload_timeout
        while True:
            try:
                states = self.sources.replicas()
            except CutoverError:
                states = []
            if states and all(state.content_hash == expected for state in states):
                return {state.url: state.version for state in states}
            if self.clock() >= deadline:
                lagging = [state.url for state in states if state.content_hash != expected] or list(self.plan.facade.replicas)
                self._event("writes.warning", detail=f"{', '.join(lagging)} did not serve the switch within "
                                                    f"{self.plan.facade.reload_timeout:g}s; their holds end with the lease")
                return {state.url: state.version for state in states}
            time.sleep(_POLL)

    def _measured_pause(self, hold_id: str) -> float | None:
        """First worker holding → last worker released, as the replicas report it."""
        deadline = self.clock() + 2.0
        while True:
            reports = [report for report in self._hold_reports(hold_id).values() if report]
            ended = [report for report in reports if report.get("released_at") is not None]
            if reports and len(ended) == len(reports):
                first = min(float(report["installed_at"]) for report in ended if report.get("installed_at") is not None)
                return round(max(float(report["released_at"]) for report in ended) - first, 4)
            if self.clock() >= deadline:
                return None
            time.sleep(0.02)

    def _release_to_old(self, hold_id: str, ownership_set: Mapping[str, Any] | None) -> None:
        """Undo a switch that did not happen: the hold goes (requests to the old writer), ownership back."""
        try:
            clear_hold(self.plan.routing, hold_id, env=self.env)
        except (ConfigError, FacadeError) as exc:
            self._event("writes.warning", detail=f"cannot clear hold {hold_id}: {exc}; it ends with its lease")
        try:
            self._reload_all()
        except _Abort:
            pass
        self._wait_served()
        if ownership_set is not None:
            self._undo_ownership(ownership_set)
        self._step("release", "done", to="old writer")

    # -- ownership, reverse position, verify ----------------------------------------------------

    def _owned(self) -> dict[str, list[str]]:
        return {table: list(columns.service) for table, columns in self.writes.ownership.items()}

    def _ownership(self, fence: int) -> dict[str, Any]:
        from cdc.fence import emit_fence, set_ownership

        streams = self._streams_now()
        if self.direction == "forward":
            change = {"enforced": True, "from_lsn": fence}
        else:
            change = {"enforced": False, "from_lsn": emit_fence(streams.legacy_url, f"{self.plan.name}-ownership",
                                                                conn=self._conns.get(streams.legacy_url))}
        self._step("ownership", "intent", **change)
        self._ownership_intent = change
        set_ownership(streams.service_url, streams.forward.name, owned=self._owned() or None,
                      note=f"write switch {self.direction} ({self.result.hold_id})", conn=self._conns.get(streams.service_url),
                      **change)
        self._step("ownership", "done", later=True, **change)
        return change

    def _undo_ownership(self, change: Mapping[str, Any]) -> None:
        """Put ownership back as it was from the same position; forward: re-send legacy's rows that
        became conflicts in between (the monolith stayed the writer, so they are its writes)."""
        from cdc.fence import set_ownership

        streams = self._streams_now()
        start = int(change["from_lsn"])
        set_ownership(streams.service_url, streams.forward.name, enforced=not change["enforced"], from_lsn=start,
                      owned=self._owned() or None, note=f"undo of write switch {self.direction} ({self.result.hold_id})")
        if change["enforced"]:
            touched = _resend_conflicts(streams.forward, start)
            self._step("ownership", "undone", resent=touched, from_lsn=start)
        else:
            self._step("ownership", "undone", from_lsn=start)

    def _reverse_position(self) -> None:
        from cdc.slot import slot_name, slot_state

        streams = self._streams_now()
        slot = slot_name(streams.reverse.name)
        state = slot_state(streams.service_url, slot, conn=self._conns.get(streams.service_url, autocommit=True))
        if state is None:
            raise _Abort(f"the reverse stream's slot {slot} is gone; start strangler cdc run --spec {streams.reverse.path}")
        position = state.confirmed_flush_lsn or state.restart_lsn or 0
        detail = {"slot": slot, "slot_position": position, "service_lsn": state.current_lsn, "active": state.active}
        self._step("reverse", "done", later=True, **detail)

    def _verify_both(self) -> None:
        """Once both streams have caught up (a fence through each), verify each direction."""
        from cdc.exceptions import CDCError
        from cdc.fence import fence_through

        streams = self._streams_now()
        wait = self.plan.gates.verify.wait if self.plan.gates.verify is not None else 30.0
        out: dict[str, Any] = {}
        for spec, what in ((streams.forward, "forward"), (streams.reverse, "reverse")):
            try:
                fence_through(spec, f"{self.plan.name}-verify", wait)
            except CDCError as exc:
                out[what] = {"identical": False, "summary": f"not caught up: {exc}"}
                continue
            identical, summary = self._verify(spec)
            out[what] = {"identical": identical, "summary": summary}
        out["conflicts"] = _conflict_counts(streams)
        self.result.verify = out
        self._step("verify", "done", **out)

    # -- recovery --------------------------------------------------------------------------------

    def _recover(self) -> str | None:
        """Finish or undo a switch a killed runner left; None when there was none."""
        state = writes_state(self.journal.entries())
        unfinished = state["unfinished"]
        if unfinished is None:
            return None
        start = unfinished["start"]
        direction: Direction = start.get("direction", "forward")
        done = {step for step, phase, _ in unfinished["steps"] if phase == "done"}
        intents = {step: detail for step, phase, detail in unfinished["steps"] if phase == "intent"}
        hold_id = next((detail.get("hold_id") for step, _, detail in unfinished["steps"] if step == "hold" and detail.get("hold_id")), None)
        ownership = next((detail for step, phase, detail in reversed(unfinished["steps"]) if step == "ownership" and phase == "intent"), None)
        saved = self.direction
        self.direction = direction
        self.result.hold_id = hold_id
        try:
            new = start.get("new", self.plan.target)
            switched = "switch" in done or ("switch" in intents and self._file_switched(new, hold_id))
            if switched:
                if "switch" not in done:
                    self._step("switch", "done", recovered=True)
                self._verify_both()
                self.journal.write("writes.end", detail={"direction": direction, "outcome": "switched", "reason": "recovered",
                                                         "hold_id": hold_id})
                return f"finished the {direction} switch a stopped runner had made"
            if hold_id is not None:
                self._release_to_old(hold_id, {"enforced": ownership["enforced"], "from_lsn": ownership["from_lsn"]} if ownership else None)
            elif ownership is not None:
                self._undo_ownership(ownership)
            self.journal.write("writes.end", detail={"direction": direction, "outcome": "aborted",
                                                     "reason": "a stopped runner's switch was undone", "hold_id": hold_id})
            return f"undid the {direction} switch a stopped runner had begun"
        finally:
            self.direction = saved
            self.result.hold_id = None

    def _file_switched(self, new: str, hold_id: str | None) -> bool:
        config = load_config(self.plan.routing, env=self.env)
        routes = {route.id: route for route in config.routes}
        return all(
            name in routes and float(routes[name].to.get(new, 0)) >= 100.0
            and (routes[name].hold is None or routes[name].hold.id != hold_id)
            for name in self.writes.routes
        )


def _ack_wait(report: float, readings: Sequence[Mapping[str, Any]]) -> float:
    """The acks' wait beyond the drain: the first round of hold reports (`report` seconds), and,
    when a write is in flight at any replica as the hold lands, the half-interval of polling on
    average before the round that sees the ack. The chance is Poisson's for the mean number in
    flight summed over the replicas (one for a replica that did not measure it)."""
    inflight = sum(float(r["inflight"]) if r.get("inflight") is not None else 1.0 for r in readings) if readings else 1.0
    return report + (1.0 - math.exp(-inflight)) * (report + _POLL) / 2


class _Abort(Exception):
    """A step before the switch failed: release to the old writer."""


def _resend_conflicts(spec: Any, after_lsn: int) -> int:
    """Touch (UPDATE key = key) the legacy rows whose changes became conflicts after `after_lsn`, so
    the forward stream, applying everything again, brings them over; drop those conflicts."""
    from cdc.conflicts import DDL

    by_target = {table.target: table for table in spec.tables}
    touched = 0
    source = psycopg2.connect(spec.source_url)
    target = psycopg2.connect(spec.target_url)
    try:
        with target, target.cursor() as cur:
            cur.execute(DDL)
            cur.execute("SELECT id, target_table, pk FROM strangler.conflict WHERE spec = %s AND position[1] > %s",
                        (spec.name, after_lsn))
            rows = cur.fetchall()
        import json

        with source, source.cursor() as cur:
            for _id, target_table, pk in rows:
                table = by_target.get(target_table)
                if table is None:
                    continue
                values = json.loads(pk)
                where = " AND ".join(f'"{column}" = %s' for column in table.key)
                first = table.key[0]
                cur.execute(f'UPDATE "{table.source_schema}"."{table.source_table}" SET "{first}" = "{first}" WHERE {where}', values)
                touched += cur.rowcount
        with target, target.cursor() as cur:
            cur.execute("DELETE FROM strangler.conflict WHERE id = ANY(%s)", ([row[0] for row in rows],))
    finally:
        source.close()
        target.close()
    return touched


def _replica_identity(streams: _Streams, owned_tables: Sequence[str]) -> list[tuple[str, bool, str]]:
    """Each source table of both streams with REPLICA IDENTITY FULL? Ownership needs the old row of
    an update to tell which columns it changed; without it a stale copy of the other side's column
    in the same row looks like a change to it, and becomes a false conflict."""
    out = []
    for spec in (streams.forward, streams.reverse):
        owned = [table for table in spec.tables if table.owned_by_service or table.target in owned_tables
                 or table.source in owned_tables]
        conn = psycopg2.connect(spec.source_url)
        try:
            with conn.cursor() as cur:
                for table in owned:
                    cur.execute("SELECT c.relreplident FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                "WHERE n.nspname = %s AND c.relname = %s", (table.source_schema, table.source_table))
                    row = cur.fetchone()
                    name = f"{table.source_schema}.{table.source_table}"
                    full = row is not None and row[0] == "f"
                    out.append((name, full, f"{name}: full" if full else
                                f"{name} does not log whole old rows; run ALTER TABLE {name} REPLICA IDENTITY FULL; "
                                "(column ownership needs them to tell a change from a stale copy)"))
        finally:
            conn.close()
    return out


def _conflict_counts(streams: _Streams) -> dict[str, int]:
    from cdc import conflicts

    out = {}
    for spec, what in ((streams.forward, "forward"), (streams.reverse, "reverse")):
        conn = psycopg2.connect(spec.target_url)
        try:
            with conn.cursor() as cur:
                out[what] = conflicts.count(cur, spec.name)
        finally:
            conn.close()
    return out


def switch_writes(
    plan: Plan,
    *,
    direction: str = "forward",
    dry_run: bool = False,
    env: Mapping[str, str] | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> WriteSwitchResult:
    """Switch the plan's write routes to the target (`forward`) or back; journaled, under the lease."""
    if direction not in ("forward", "back"):
        raise CutoverError(f"direction {direction!r}: use forward or back")
    env = os.environ if env is None else env
    sources = Sources(plan, env=env)
    journal = open_journal(plan, env, create=not dry_run)
    try:
        if dry_run:
            memory = MemoryJournal(journal.entries())
            return WriteSwitch(plan, memory, sources, direction=direction, dry_run=True, env=env, on_event=on_event).run()  # type: ignore[arg-type]
        journal.acquire(new_holder())
        try:
            return WriteSwitch(plan, journal, sources, direction=direction, env=env, on_event=on_event).run()  # type: ignore[arg-type]
        finally:
            journal.release()
    finally:
        journal.close()
