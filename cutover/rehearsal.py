"""The rehearsal (`strangler rehearse PLAN --traffic FILE`): a whole cutover plan on a scratch stack.

On a private PostgreSQL in a temporary directory it builds a copy of the legacy database
(`cutover.rehearsal_copy`: schema and a sample or all rows) and an empty service store, runs the
legacy application and the service from the commands in the plan's `rehearsal:` section, fills
the store with the plan's sync (a scratch copy of the spec, its URLs the scratch databases),
starts a scratch façade on a copy of the routing file (its upstreams the scratch applications, its
shadow store in the temporary directory), replays the recorded reads through it
(`cutover.rehearsal_replay`) and runs the plan with `cutover.control.run`: soaks shortened by
`speed`, request minimums scaled to what the replay delivers (`Scaling`), `approve` steps approved
by the rehearsal (journaled as such), the journal in the scratch store. Then it reads verify, dead
letters and conflicts, stops and removes everything it started, and returns one report document
(`cutover.rehearsal_report` renders it). The real routing file and databases are never touched;
the legacy database is only read.
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ruamel.yaml import YAML

from common.postgres import EmbeddedPostgres, find_bin_dir, free_port
from common.processes import Child, ProcessError, ProcessGroup, python_module
from cutover.exceptions import CutoverError
from cutover.plan import Plan, RehearsalApp, Soak
from cutover.rehearsal_copy import copy_database
from cutover.rehearsal_replay import Replay, Sticky, Survey, survey

__all__ = ["CLOSED_URL", "MIN_INTERVAL", "RehearsalOptions", "Scaling", "command_argv", "rehearse", "scaled_plan", "scaling_for"]

MIN_INTERVAL = 0.25  # the gates are read at most this often, however high the speed
HEARTBEAT_INTERVAL = 1.0  # seconds, of the scratch sync (see _start_cdc)
CLOSED_URL = "http://127.0.0.1:9"  # upstreams the rehearsal does not start: nothing listens (discard port)
PLACEHOLDERS = ("port", "database_url", "legacy_url", "legacy_database_url", "service_database_url", "python")


@dataclass(frozen=True, kw_only=True)
class RehearsalOptions:
    """What `strangler rehearse` was asked: the traffic, the speed, the legacy database and how much of it."""

    traffic: Path
    speed: float = 60.0
    source_url: str | None = None  # default: the plan's sync spec source
    sample: int | None = None  # rows per table; default the plan's rehearsal.sample
    all_rows: bool = False
    max_rate: float | None = None  # default the plan's rehearsal.max_rate
    work_dir: Path | None = None  # where the temporary directory is made (default: the system's)
    plan_file: Path | None = None  # named in the report


# --------------------------------------------------------------------------------------------
# Scaling the plan to the rehearsal's time and traffic (pure)


@dataclass(frozen=True)
class Scaling:
    """Times divided by `speed`; request minimums multiplied by `factor`.

    The replay sends the recorded requests `speed` times faster, up to `max_rate`; `factor` is
    the share of the recorded traffic (the requests the records stand for, sped up) that it
    delivers on the plan's routes, so a step that would see too few requests in production sees
    too few in the rehearsal too, and one that would see enough sees enough.
    """

    speed: float
    factor: float
    replay_rate: float  # requests/s the replay aims at, every route
    route_replay_rate: float  # of them on the plan's routes
    route_recorded_rate: float  # requests/s the records stand for on the plan's routes, as recorded

    def requests(self, count: int) -> int:
        return 0 if count <= 0 else max(1, math.ceil(count * self.factor))

    def seconds(self, value: float, floor: float = 0.0) -> float:
        return max(value / self.speed, floor)

    def as_dict(self) -> dict[str, Any]:
        return {
            "speed": self.speed, "factor": round(self.factor, 6), "replay_rate": round(self.replay_rate, 2),
            "route_replay_rate": round(self.route_replay_rate, 2), "route_recorded_rate": round(self.route_recorded_rate, 2),
        }


def scaling_for(found: Survey, *, speed: float, max_rate: float) -> Scaling:
    """The scaling of a rehearsal replaying `found` at `speed`, no faster than `max_rate`."""
    if speed <= 0:
        raise CutoverError(f"--speed {speed:g} is not above 0; give how many times faster than recorded to run, e.g. --speed 60")
    if found.replayable == 0:
        raise CutoverError("the traffic file holds no GET or HEAD requests to replay; record reads with traffic_record first")
    cycle = found.cycle
    replay_rate = min(found.replayable / cycle * speed, max_rate)
    route_replay = replay_rate * found.on_routes / found.replayable
    recorded = found.weight_on_routes / cycle
    factor = min(1.0, route_replay / (recorded * speed)) if recorded > 0 else 1.0
    return Scaling(speed, factor, replay_rate, route_replay, recorded)


def _soak(soak: Soak, scaling: Scaling) -> Soak:
    return Soak(min_time=scaling.seconds(soak.min_time), min_requests=scaling.requests(soak.min_requests))


def scaled_plan(
    plan: Plan, scaling: Scaling, *, routing: Path, sync: Path | None, reverse_sync: Path | None, journal_url: str,
    facade_url: str, events_dir: Path,
) -> tuple[Plan, list[dict[str, Any]]]:
    """The plan the rehearsal runs (scratch files and URLs, scaled soaks) and each scaled value, before and after."""
    changes: list[dict[str, Any]] = []

    def note(key: str, before: Any, after: Any) -> Any:
        if before != after:
            changes.append({"key": key, "plan": before, "rehearsal": after})
        return after

    interval = note("interval", plan.interval, scaling.seconds(plan.interval, MIN_INTERVAL))
    soak = _soak(plan.soak, scaling)
    note("soak.min_time", plan.soak.min_time, soak.min_time)
    note("soak.min_requests", plan.soak.min_requests, soak.min_requests)
    steps = []
    for index, step in enumerate(plan.steps):
        if step.soak is not None:
            own = _soak(step.soak, scaling)
            note(f"steps[{index}].soak.min_time", step.soak.min_time, own.min_time)
            note(f"steps[{index}].soak.min_requests", step.soak.min_requests, own.min_requests)
            step = step.model_copy(update={"soak": own})
        steps.append(step)
    gates: dict[str, Any] = {}
    for name, field_name in (("shadow_mismatch", "min_compared"), ("error_rate", "min_requests"), ("latency", "min_requests")):
        gate = getattr(plan.gates, name)
        if gate is not None:
            value = note(f"gates.{name}.{field_name}", getattr(gate, field_name), scaling.requests(getattr(gate, field_name)))
            gates[name] = gate.model_copy(update={field_name: value})
    if plan.gates.verify is not None:
        age = note("gates.verify.max_age", plan.gates.verify.max_age, scaling.seconds(plan.gates.verify.max_age, 2 * interval))
        gates["verify"] = plan.gates.verify.model_copy(update={"max_age": age})
    max_soak = note("on_inconclusive.max_soak", plan.on_inconclusive.max_soak,
                    scaling.seconds(plan.on_inconclusive.max_soak, max(soak.min_time, 2 * interval)))
    writes = plan.writes
    if writes is not None and reverse_sync is not None:
        writes = writes.model_copy(update={"reverse_sync": str(reverse_sync)})
    rehearsed = plan.model_copy(update={
        "routing": str(routing), "sync": str(sync) if sync is not None else None,
        "facade": plan.facade.model_copy(update={"replicas": (facade_url,)}),
        "steps": tuple(steps), "soak": soak, "gates": plan.gates.model_copy(update=gates), "interval": interval,
        "on_inconclusive": plan.on_inconclusive.model_copy(update={"max_soak": max_soak}),
        "journal": plan.journal.model_copy(update={"database_url": journal_url}),
        "events": plan.events.model_copy(update={
            "file": str(events_dir / "cutover-events.jsonl"), "notify": None, "metrics_file": str(events_dir / "cutover.prom")}),
        "postpone_file": None, "writes": writes,
    })
    return rehearsed, changes


# --------------------------------------------------------------------------------------------
# Commands and scratch files


def command_argv(template: str, values: Mapping[str, str], what: str) -> list[str]:
    """A `rehearsal:` command with its placeholders filled, split like a shell; `python` is this interpreter."""
    try:
        text = template.format_map(dict(values))
    except (KeyError, IndexError, ValueError) as exc:
        known = ", ".join("{" + name + "}" for name in PLACEHOLDERS)
        raise CutoverError(f"rehearsal.{what}: {template!r} has a placeholder that is not known ({exc}); known: {known}") from exc
    argv = shlex.split(text)
    if not argv:
        raise CutoverError(f"rehearsal.{what} is empty; name the command, e.g. python -m myapp serve --port {{port}}")
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv


def _load_yaml(path: Path) -> tuple[YAML, Any]:
    yaml = YAML()
    yaml.preserve_quotes = True
    try:
        return yaml, yaml.load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CutoverError(f"cannot read {path}: {exc.strerror}") from exc


def write_routing(source: Path, target: Path, *, urls: Mapping[str, str], shadow_db: Path) -> dict[str, str]:
    """A copy of the routing file whose upstreams are the scratch applications (others: nothing listens)."""
    yaml, data = _load_yaml(source)
    chosen: dict[str, str] = {}
    for name, upstream in (data.get("upstreams") or {}).items():
        chosen[name] = urls.get(name, CLOSED_URL)
        upstream["url"] = chosen[name]
    store = data.get("shadow_store") or {}
    store["url"] = f"sqlite:///{shadow_db}"
    data["shadow_store"] = store
    data.pop("traffic_record", None)  # the rehearsal's own requests are not recorded into the real file
    with target.open("w", encoding="utf-8") as out:
        out.write(f"# Scratch copy of {source} for `strangler rehearse`.\n")
        yaml.dump(data, out)
    return chosen


def write_spec(source: Path, target: Path, *, source_url: str, target_url: str) -> Path:
    """A copy of a sync spec with the scratch databases as its source and target."""
    yaml, data = _load_yaml(source)
    for side, url in (("source", source_url), ("target", target_url)):
        block = data.get(side) or {}
        block["url"] = url
        data[side] = block
    with target.open("w", encoding="utf-8") as out:
        yaml.dump(data, out)
    return target


def redact(url: str) -> str:
    """A database URL without its password, for the report."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# --------------------------------------------------------------------------------------------
# The rehearsal


class _Progress:
    """Timings of the phases, and the caller's progress callback."""

    def __init__(self, on_progress: Callable[[str], None] | None) -> None:
        self.on_progress = on_progress
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str, text: str) -> Iterator[None]:
        if self.on_progress is not None:
            self.on_progress(text)
        started = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = round(time.monotonic() - started, 3)

    def say(self, text: str) -> None:
        if self.on_progress is not None:
            self.on_progress(text)


def _source_url(plan: Plan, options: RehearsalOptions, env: Mapping[str, str]) -> str:
    if options.source_url:
        return options.source_url
    if plan.sync:
        from cdc.exceptions import CDCError
        from cdc.spec import load_spec

        try:
            spec = load_spec(plan.sync, env=env)
        except CDCError as exc:
            raise CutoverError(f"the plan's sync spec does not load: {exc}") from exc
        if spec.source_url:
            return spec.source_url
    raise CutoverError("no legacy database to copy: pass --source-url postgresql://..., or set the sync spec's source url")


def _stop_all(group: ProcessGroup) -> list[dict[str, Any]]:
    """Stop every child (newest first) and report its exit and whether its whole process group is gone."""
    stopped = []
    for child in reversed(list(group.children)):
        group.stop(child)
        stopped.append({"name": child.name, "exit_code": child.process.returncode, "group_gone": _group_gone(child)})
    return stopped


def _group_gone(child: Child) -> bool:
    try:
        os.killpg(child.process.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _approver(plan: Plan, journal_url: str) -> Callable[[dict[str, Any]], None]:
    """Approves every `approve` step as the runner reaches it: a `request.approve` journaled by the rehearsal."""
    from cutover.journal import PostgresJournal

    def approve(event: dict[str, Any]) -> None:
        if event.get("event") != "awaiting_approval":
            return
        journal = PostgresJournal(journal_url, plan.name, lease=plan.journal.lease, create=False)
        try:
            journal.write("request.approve", detail={"by": "strangler rehearse", "reason": "approved by the rehearsal"})
        finally:
            journal.close()

    return approve


def rehearse(
    plan: Plan, options: RehearsalOptions, *, env: Mapping[str, str] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Rehearse `plan` on a scratch stack; the report document (see `cutover.rehearsal_report`)."""
    from cutover.rehearsal_report import document

    env = dict(os.environ if env is None else env)
    if plan.rehearsal is None:
        raise CutoverError(
            f"plan {plan.name!r} has no rehearsal: section naming how to start the applications; add e.g.\n"
            "rehearsal:\n  legacy: {serve: python -m monolith serve --database-url {database_url} --port {port}}\n"
            "  service: {migrate: ..., serve: ... --port {port}}"
        )
    found = survey(options.traffic, plan.routes)
    max_rate = options.max_rate or plan.rehearsal.max_rate
    scaling = scaling_for(found, speed=options.speed, max_rate=max_rate)
    source_url = _source_url(plan, options, env)
    sample = None if options.all_rows else (options.sample or plan.rehearsal.sample)
    progress = _Progress(on_progress)
    started = time.time()
    if options.work_dir is not None:
        options.work_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="strangler-rehearse-", dir=options.work_dir))
    state: dict[str, Any] = {"scaling": scaling, "survey": found, "source_url": redact(source_url), "sample": sample,
                             "max_rate": max_rate, "scratch": str(scratch), "started": started}
    cleanup: dict[str, Any] = {"temp_dir": str(scratch)}
    server: EmbeddedPostgres | None = None
    group = ProcessGroup(scratch / "logs")
    try:
        with progress.phase("cluster", "starting a scratch PostgreSQL (wal_level=logical)"):
            server = EmbeddedPostgres(scratch / "postgres", ephemeral=True).start()
            legacy_db = server.create_database("rehearsal_legacy")
            service_db = server.create_database("rehearsal_service")
        with progress.phase("copy", f"copying the legacy database ({'all rows' if sample is None else f'{sample} rows a table'})"):
            state["copy"] = copy_database(source_url, legacy_db, bin_dir=find_bin_dir(), sample=sample).as_dict()
        _start_stack(plan, options, scaling, found, group, progress, state, scratch=scratch, legacy_db=legacy_db,
                     service_db=service_db)
        _run_plan(plan, progress, state, env)
    except ProcessError as exc:
        raise CutoverError(f"the scratch stack did not come up: {exc}") from exc
    finally:
        replay: Replay | None = state.get("replay_engine")
        if replay is not None:
            try:
                state["replay"] = replay.stop().as_dict()
            except Exception as exc:  # noqa: BLE001 - a replay that broke is reported, cleanup goes on
                state["replay"] = {"error": f"{type(exc).__name__}: {exc}"}
        with progress.phase("cleanup", "stopping and removing everything the rehearsal started"):
            cleanup["processes"] = _stop_all(group)
            if server is not None:
                server.stop()
                cleanup["cluster_removed"] = not server.data_dir.exists()
            shutil.rmtree(scratch, ignore_errors=True)
            cleanup["temp_dir_removed"] = not scratch.exists()
    state["cleanup"] = cleanup
    state["timings"] = progress.timings
    state["finished"] = time.time()
    return document(plan, options, state)


def _start_stack(
    plan: Plan, options: RehearsalOptions, scaling: Scaling, found: Survey, group: ProcessGroup, progress: _Progress,
    state: dict[str, Any], *, scratch: Path, legacy_db: str, service_db: str,
) -> None:
    """The two applications, the sync, the façade and the replay, on the scratch databases."""
    from facade.config import load_config

    assert plan.rehearsal is not None
    routing = load_config(plan.routing, env=os.environ)
    route = next(item for item in routing.routes if item.id == plan.routes[0])
    old = next(name for name in route.to if name != plan.target)
    legacy_port, service_port, facade_port = free_port(), free_port(), free_port()
    urls = {old: f"http://127.0.0.1:{legacy_port}", plan.target: f"http://127.0.0.1:{service_port}"}
    values = {"legacy_url": urls[old], "legacy_database_url": legacy_db, "service_database_url": service_db,
              "python": sys.executable}
    processes: list[dict[str, Any]] = []
    with progress.phase("applications", f"starting {old} and {plan.target} on the scratch databases"):
        for role, app, name, port, database in (("legacy", plan.rehearsal.legacy, old, legacy_port, legacy_db),
                                                ("service", plan.rehearsal.service, plan.target, service_port, service_db)):
            _start_app(group, role, name, app, {**values, "port": str(port), "database_url": database}, urls[name])
            processes.append({"name": name, "role": role, "url": urls[name], "serve": app.serve, "migrate": app.migrate})
    specs: dict[str, Path] = {}
    if plan.sync:
        specs["sync"] = write_spec(Path(plan.sync), scratch / "sync.yaml", source_url=legacy_db, target_url=service_db)
        with progress.phase("snapshot", "CDC: snapshot of the copied legacy tables into the scratch store, then streaming"):
            _start_cdc(group, "cdc", specs["sync"], source_url=legacy_db, target_url=service_db)
        state.setdefault("synced", {})["sync"] = specs["sync"]
        processes.append({"name": "cdc", "role": "sync", "spec": plan.sync})
    if plan.writes is not None and plan.writes.reverse_sync and Path(plan.writes.reverse_sync).exists():
        specs["reverse"] = write_spec(Path(plan.writes.reverse_sync), scratch / "reverse.yaml", source_url=service_db,
                                      target_url=legacy_db)
        with progress.phase("reverse", "CDC: the reverse stream (service store → legacy tables), idle until the write switch"):
            _start_cdc(group, "cdc-reverse", specs["reverse"], source_url=service_db, target_url=legacy_db)
        state.setdefault("synced", {})["reverse"] = specs["reverse"]
        processes.append({"name": "cdc-reverse", "role": "reverse sync", "spec": plan.writes.reverse_sync})
    with progress.phase("facade", "starting the scratch façade"):
        chosen = write_routing(Path(plan.routing), scratch / "routing.yaml", urls=urls, shadow_db=scratch / "shadow.db")
        facade_url = f"http://127.0.0.1:{facade_port}"
        child = group.start("facade", python_module("scripts", "facade", "serve", "--config", str(scratch / "routing.yaml"),
                                                    "--port", str(facade_port), "--no-access-log"))
        group.wait_healthy(child, f"{facade_url}/_strangler/health")
        processes.append({"name": "facade", "role": "facade", "url": facade_url, "upstreams": chosen})
    rehearsed, changes = scaled_plan(
        plan, scaling, routing=scratch / "routing.yaml", sync=specs.get("sync"), reverse_sync=specs.get("reverse"),
        journal_url=service_db, facade_url=facade_url, events_dir=scratch,
    )
    scratch_routing = load_config(scratch / "routing.yaml", env=os.environ)
    sticky = {r.id: Sticky(r.sticky.header, r.sticky.cookie) if r.sticky is not None else Sticky() for r in scratch_routing.routes}
    state.update(processes=processes, rehearsed_plan=rehearsed, changes=changes, specs=specs, journal_url=service_db, old=old)
    progress.say(f"replaying {found.replayable} recorded reads at {scaling.speed:g}× (up to {scaling.replay_rate:.0f}/s)")
    state["replay_engine"] = Replay(options.traffic, facade_url, found, speed=scaling.speed, max_rate=scaling.replay_rate,
                                    sticky=sticky, assignment_cookie=scratch_routing.assignment.cookie).start()


def _start_app(group: ProcessGroup, role: str, name: str, app: RehearsalApp, values: dict[str, str], url: str) -> None:
    extra = {key: value.format_map(values) for key, value in app.env.items()}
    if app.migrate:
        group.run(f"{name}-migrate", command_argv(app.migrate, values, f"{role}.migrate"), env=extra)
    child = group.start(name, command_argv(app.serve, values, f"{role}.serve"), env=extra)
    group.wait_healthy(child, url + app.health, timeout=app.start_timeout)


def _start_cdc(group: ProcessGroup, name: str, spec_path: Path, *, source_url: str, target_url: str) -> None:
    from cdc.exceptions import CDCError
    from cdc.spec import load_spec
    from cdc.verify import verify

    # The URLs also as flags: `cdc run` takes them from the environment before the spec, and the
    # environment may name the real databases.
    # The scratch legacy database gets no writes (none are replayed), so its sync would be idle far
    # more than a live one: heartbeats every second keep its lag what a busy sync's would be.
    child = group.start(name, python_module("scripts", "cdc", "run", "--spec", str(spec_path), "--source-url", source_url,
                                            "--target-url", target_url, "--heartbeat-interval", str(HEARTBEAT_INTERVAL)))
    try:
        result = verify(load_spec(spec_path, env={}), wait=120)
    except CDCError as exc:
        raise CutoverError(f"the scratch sync did not start: {exc}; last lines of its log:\n{child.tail()}") from exc
    if child.process.poll() is not None:
        raise ProcessError(f"cdc run exited with code {child.process.returncode}; last lines:\n{child.tail()}")
    if not result.identical:
        raise CutoverError(f"the scratch store did not catch up with the copied legacy tables: {result.to_dict()['tables']}")


def _run_plan(plan: Plan, progress: _Progress, state: dict[str, Any], env: Mapping[str, str]) -> None:
    """The read cutover through `cutover.control.run`, then the write switch, then the data's state."""
    from cutover import control

    rehearsed: Plan = state["rehearsed_plan"]
    events: list[dict[str, Any]] = []
    approve = _approver(rehearsed, state["journal_url"])

    def on_event(event: dict[str, Any]) -> None:
        events.append(event)
        approve(event)
        if event.get("event") in ("applied", "decision", "paused", "done", "approved"):
            detail = event.get("detail") or {}
            text = detail.get("description") or detail.get("reason") or ""
            progress.say(f"  {event['event']}" + (f" [{detail['label']}]" if detail.get("label") else "") + (f": {text}" if text else ""))

    state["events"] = events
    with progress.phase("run", f"running plan {plan.name} ({len(plan.steps)} steps, soaks ÷{state['scaling'].speed:g})"):
        result = control.run(rehearsed, env=env, exit_when_paused=True, on_event=on_event)
    state["run"] = result.as_dict()
    with progress.phase("writes", "the write switch"):
        state["writes"] = writes = _rehearse_writes(plan, rehearsed, result.status, env)
        if writes.get("rehearsed"):
            pause, estimate = writes.get("pause_s"), (writes.get("estimate") or {}).get("pause_s")
            progress.say(f"  writes {writes['outcome']}: {writes['reason']}"
                         + (f"; pause {pause * 1000:.0f} ms, estimated {estimate * 1000:.0f} ms" if pause and estimate else ""))
        else:
            progress.say(f"  writes: not rehearsed ({writes['reason']})")
    with progress.phase("data", "verify, dead letters and conflicts of the scratch sync"):
        state["data"] = _data_state(state.get("synced", {}))


def _rehearse_writes(plan: Plan, rehearsed: Plan, status: str, env: Mapping[str, str]) -> dict[str, Any]:
    """The write switch on the scratch stack when the plan has one and the read cutover finished."""
    if plan.writes is None:
        return {"rehearsed": False, "reason": "the plan has no writes: section"}
    if status != "done":
        return {"rehearsed": False, "reason": f"the read cutover ended {status}, and the write switch follows a finished one"}
    if rehearsed.writes is None or not rehearsed.writes.reverse_sync or not Path(rehearsed.writes.reverse_sync).exists():
        return {"rehearsed": False, "reason": "the plan's reverse sync spec (writes.reverse_sync) is missing"}
    from cutover.writes import switch_writes

    result = switch_writes(rehearsed, env=env, direction="forward", dry_run=False)
    return {"rehearsed": True, **result.as_dict()}


def _data_state(specs: Mapping[str, Path]) -> dict[str, Any]:
    """Per sync: the final verify, dead letters (the latest few) and conflicts."""
    import psycopg2

    from cdc import deadletter
    from cdc.exceptions import CDCError
    from cdc.spec import load_spec
    from cdc.status import status
    from cdc.verify import verify

    out: dict[str, Any] = {}
    for name, path in specs.items():
        spec = load_spec(path, env={})
        entry: dict[str, Any] = {"spec": spec.name}
        try:
            entry["verify"] = verify(spec, wait=30).to_dict()
            health = status(spec)
            entry.update(dead_letters=health.dead_letters, conflicts=health.conflicts, recent_conflicts=health.recent_conflicts,
                         lag_seconds=health.lag_seconds)
            conn = psycopg2.connect(spec.target_url)
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT to_regclass('strangler.dead_letter') IS NOT NULL")
                    letters = deadletter.list_recent(cur, spec.name, 5) if cur.fetchone()[0] else []
            finally:
                conn.close()
            entry["recent_dead_letters"] = [{"id": d.id, "reason": d.reason, "position": list(d.position),
                                             "table": (d.event.get("source") or {}).get("table")} for d in letters]
        except (CDCError, psycopg2.Error) as exc:
            entry["error"] = str(exc)
        out[name] = entry
    return out
