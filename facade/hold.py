"""The write hold at the façade: held routes, their lease and drain, and each worker's ack.

A hold is a route setting in `routing.yaml` (`hold: {id, until, budget}`, see
`facade.config.HoldConfig`, written by `facade.hold_edit`), so it rides the reload path and
reaches every worker of every replica: under `--workers N` an admin call reaches one worker, a
file every worker reloads reaches all. `Holds.configure(table)` runs on every table swap, after the
proxy installed the table, so what it releases goes to the upstream that table names.

In one worker, a request whose route is held waits before its body is read (`Holds.wait`) and,
on release, is matched again on the table in force then. One that waits longer than the hold's
`budget` gets 503 (`HoldTimeout`). The lease `until` (unix time) releases the hold by itself in
every worker, also when nobody clears it, so a crashed runner never leaves writes held.

The ack: a worker has drained a hold once it is installed and the requests on its routes that
were in flight before it (`enter`/`leave` count them per route) have finished. Each worker keeps
its state in `<directory>/<pid>.json` (written atomically when a hold is installed, drained or
released, and, coalesced, as held requests come and go). `report()`, in whichever worker the
admin call reaches, reads the files of the live workers of its group (a dead worker's file is
removed), so `GET /_strangler/hold` tells whether every one of the `workers` expected has
installed and drained each hold: one call acks a whole replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from facade.drain import RecentRequests
from facade.exceptions import FacadeError

if TYPE_CHECKING:
    from facade.routing import Route, RouteTable

__all__ = ["HoldObserver", "HoldTimeout", "Holds", "aggregate"]

log = logging.getLogger("strangler.facade")

_KEEP_RELEASED = 16
"""Released holds a worker still reports (so a report shows how each one ended)."""
_FLUSH_DELAY = 0.05
"""Held counts reach the state file at most this often (seconds)."""


class HoldTimeout(FacadeError):
    """A held request waited longer than its hold's budget."""


class HoldObserver(Protocol):
    """Where hold numbers go (the façade's metrics)."""

    def hold_waited(self, route: str, seconds: float, released: bool) -> None: ...

    def hold_ended(self, route: str, seconds: float, end: str) -> None: ...


class _Unobserved:
    def hold_waited(self, route: str, seconds: float, released: bool) -> None:
        pass

    def hold_ended(self, route: str, seconds: float, end: str) -> None:
        pass


@dataclass(eq=False)
class _RouteHold:
    """One route's part of a hold in this worker."""

    hold_id: str
    route: str
    until: float
    budget: float
    installed_at: float
    drained_at: float | None = None
    released_at: float | None = None
    end: str | None = None
    """How it was released: `cleared` (gone from the file) or `expired` (lease)."""
    event: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: dict[int, float] = field(default_factory=dict)
    """Held requests: token → unix time each began to wait (oldest first)."""

    def as_dict(self, inflight: int) -> dict[str, Any]:
        active = self.released_at is None
        return {
            "id": self.hold_id,
            "route": self.route,
            "until": self.until,
            "budget": self.budget,
            "installed_at": self.installed_at,
            "drained_at": self.drained_at,
            "released_at": self.released_at,
            "end": self.end,
            "held": len(self.waiting) if active else 0,
            "oldest_since": next(iter(self.waiting.values()), None) if active else None,
            "inflight": inflight,
        }


class Holds:
    """The holds in force in this worker, its in-flight counts per route, and its state file.

    `directory` holds one state file per worker of the group (None: this worker reports alone);
    `workers` is how many workers the group should have (the supervisor's `--workers`).
    """

    def __init__(
        self,
        *,
        directory: Path | None = None,
        workers: int = 1,
        observer: HoldObserver | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.workers = workers
        self.observer: HoldObserver = observer or _Unobserved()
        self.clock = clock
        self.pid = os.getpid()
        self.active: dict[str, _RouteHold] = {}
        """Route id → its hold in force. Empty almost always: the proxy tests it first."""
        self.released: list[_RouteHold] = []
        self.inflight: dict[str, int] = {}
        self.recent = RecentRequests()
        """Each route's last finished requests: what `GET /_strangler/drain` measures the drain on."""
        self.version = ""
        self._tokens = itertools.count()
        self._started = False
        self._lease: asyncio.TimerHandle | None = None
        self._flush_later: asyncio.TimerHandle | None = None
        self._write_failed = False

    @property
    def state_file(self) -> Path | None:
        return self.directory / f"{self.pid}.json" if self.directory is not None else None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Arm the lease timer and write the state file (needs the running loop)."""
        self._started = True
        self._arm()
        self._flush()

    def stop(self) -> None:
        """Stop the timers and remove this worker's state file. Held requests keep waiting out
        their budget: a stopping façade does not let writes through a hold."""
        self._started = False
        for handle in (self._lease, self._flush_later):
            if handle is not None:
                handle.cancel()
        self._lease = self._flush_later = None
        state = self.state_file
        if state is not None:
            state.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                state.parent.rmdir()

    # -- configuration (every table swap) -------------------------------------------------------

    def configure(self, table: RouteTable) -> None:
        """Install, renew and release holds to match `table` (already in force in the proxy)."""
        now = self.clock()
        self.version = table.version
        wanted = {route.id: route.config.hold for route in table.routes if route.config.hold is not None}
        for route_id, hold in list(self.active.items()):
            config = wanted.get(route_id)
            if config is None or config.id != hold.hold_id:
                self._release(hold, "cleared", now)
        for route_id, config in wanted.items():
            current = self.active.get(route_id)
            if config.until <= now:
                if current is not None:
                    self._release(current, "expired", now)
                continue
            if current is None:
                current = self.active[route_id] = _RouteHold(config.id, route_id, config.until, config.budget, now)
                if not self.inflight.get(route_id):
                    current.drained_at = now
                log.info("hold %r installed on route %r (lease until %.3f, budget %gs)", config.id, route_id, config.until, config.budget)
            else:
                current.until, current.budget = config.until, config.budget
        self._arm()
        self._flush()

    def _release(self, hold: _RouteHold, end: str, now: float) -> None:
        del self.active[hold.route]
        hold.released_at, hold.end = now, end
        hold.event.set()
        self.released = [*self.released[-(_KEEP_RELEASED - 1):], hold]
        self.observer.hold_ended(hold.route, now - hold.installed_at, end)
        log.info("hold %r on route %r released (%s) after %.3fs with %d held", hold.hold_id, hold.route, end, now - hold.installed_at, len(hold.waiting))

    def _arm(self) -> None:
        if self._lease is not None:
            self._lease.cancel()
            self._lease = None
        if not self.active:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # configured before the loop runs: `start` (or the first held request) arms it
        delay = min(hold.until for hold in self.active.values()) - self.clock()
        self._lease = loop.call_later(max(0.0, delay), self._expire)

    def _expire(self) -> None:
        self._lease = None
        now = self.clock()
        expired = [hold for hold in self.active.values() if hold.until <= now]
        for hold in expired:
            self._release(hold, "expired", now)
        self._arm()
        if expired:
            self._flush()

    # -- the request path -----------------------------------------------------------------------

    def enter(self, route_id: str, started: float) -> int:
        """A request on `route_id` passed the hold and is on its way to an upstream since
        `started` (monotonic, the request's own start); the token to `leave` with."""
        counts = self.inflight
        counts[route_id] = counts.get(route_id, 0) + 1
        return self.recent.started(route_id, started)

    def leave(self, route_id: str, token: int) -> None:
        """That request finished; the last one on a held route drains the hold."""
        self.recent.ended(token)
        counts = self.inflight
        left = counts[route_id] - 1
        counts[route_id] = left
        if left == 0 and self.active:
            hold = self.active.get(route_id)
            if hold is not None and hold.drained_at is None:
                hold.drained_at = self.clock()
                self._flush()

    async def wait(self, route: Route, rematch: Callable[[], Route]) -> Route:
        """Wait while `route` is held, then return `rematch()`: the route on the table in force.

        Released to a route that is held again (another hold), it waits again. Raises
        `HoldTimeout` once it has waited longer than the budget of the hold it waits on.
        """
        if self._lease is None:
            self._arm()
        token = next(self._tokens)
        started = self.clock()
        began = asyncio.get_running_loop().time()
        hold = self.active.get(route.id)
        while hold is not None:
            hold.waiting[token] = started
            self._changed()
            try:
                async with asyncio.timeout_at(began + hold.budget):
                    await hold.event.wait()
            except TimeoutError:
                self.observer.hold_waited(hold.route, self.clock() - started, False)
                raise HoldTimeout(
                    f"route {hold.route!r} is held for a write cutover (hold {hold.hold_id!r}) and the request "
                    f"waited its budget of {hold.budget:g}s; retry in a moment"
                ) from None
            finally:
                hold.waiting.pop(token, None)
                self._changed()
            self.observer.hold_waited(hold.route, self.clock() - started, True)
            route = rematch()
            hold = self.active.get(route.id)
        return route

    # -- state ----------------------------------------------------------------------------------

    def held_counts(self) -> dict[str, int]:
        """Requests waiting now, by route."""
        return {route: len(hold.waiting) for route, hold in self.active.items()}

    def snapshot(self) -> dict[str, Any]:
        """This worker's state, as its state file holds it."""
        holds = [*self.released, *self.active.values()]
        return {
            "pid": self.pid,
            "version": self.version,
            "written_at": self.clock(),
            "holds": [hold.as_dict(self.inflight.get(hold.route, 0)) for hold in holds],
        }

    def _changed(self) -> None:
        if self.directory is None or self._flush_later is not None or not self._started:
            return
        self._flush_later = asyncio.get_running_loop().call_later(_FLUSH_DELAY, self._flush)

    def _flush(self) -> None:
        if self._flush_later is not None:
            self._flush_later.cancel()
            self._flush_later = None
        state = self.state_file
        if state is None or not self._started:
            return
        try:
            state.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=f".{state.name}.", suffix=".tmp", dir=state.parent)
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                json.dump(self.snapshot(), stream)
            os.replace(temporary, state)
            self._write_failed = False
        except OSError as exc:
            if not self._write_failed:
                log.warning("cannot write the hold state file %s (%s); GET /_strangler/hold sees this worker only", state, exc)
            self._write_failed = True

    def workers_state(self) -> list[dict[str, Any]]:
        """This worker's state and that of the live workers of its group (from their files)."""
        states = [self.snapshot()]
        if self.directory is None:
            return states
        try:
            files = sorted(self.directory.glob("*.json"))
        except OSError:
            return states
        for path in files:
            if path.stem == str(self.pid) or not path.stem.isdigit():
                continue
            if not _alive(int(path.stem)):
                path.unlink(missing_ok=True)
                continue
            try:
                states.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue  # gone between listing and reading, or being replaced
        return states

    def report(self) -> dict[str, Any]:
        """What `GET /_strangler/hold` answers: every hold across the group's workers."""
        return aggregate(self.workers_state(), expected=self.workers, now=self.clock())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def aggregate(workers: Iterable[Mapping[str, Any]], *, expected: int, now: float) -> dict[str, Any]:
    """Per hold id, across workers' states: acked once every expected worker has it installed
    and drained; held requests, oldest wait and in-flight requests summed over the workers."""
    workers = list(workers)
    holds: dict[str, dict[str, Any]] = {}
    for worker in workers:
        entries: dict[str, list[Mapping[str, Any]]] = {}
        for entry in worker.get("holds", ()):
            entries.setdefault(str(entry["id"]), []).append(entry)
        for hold_id, items in entries.items():
            total = holds.setdefault(hold_id, {
                "id": hold_id, "routes": set(), "until": 0.0, "budget": 0.0, "installed": 0, "drained": 0,
                "held": 0, "oldest_wait": 0.0, "inflight": 0, "ended": set(),
                "installed_at": None, "released_at": None,
            })
            firsts = [float(entry["installed_at"]) for entry in items if entry.get("installed_at") is not None]
            if firsts:
                first = min(firsts)
                total["installed_at"] = first if total["installed_at"] is None else min(total["installed_at"], first)
            active = [entry for entry in items if entry.get("released_at") is None]
            total["routes"].update(str(entry["route"]) for entry in items)
            total["until"] = max(total["until"], *(float(entry["until"]) for entry in items))
            total["budget"] = max(total["budget"], *(float(entry["budget"]) for entry in items))
            if not active:
                total["ended"].update(str(entry["end"]) for entry in items if entry.get("end"))
                last = max(float(entry["released_at"]) for entry in items if entry.get("released_at") is not None)
                total["released_at"] = last if total["released_at"] is None else max(total["released_at"], last)
                continue
            total["installed"] += 1
            total["drained"] += all(entry.get("drained_at") is not None for entry in active)
            for entry in active:
                total["held"] += int(entry.get("held") or 0)
                total["inflight"] += int(entry.get("inflight") or 0)
                since = entry.get("oldest_since")
                if since is not None:
                    total["oldest_wait"] = max(total["oldest_wait"], now - float(since))
    seen = len(workers)
    out = []
    for hold_id in sorted(holds):
        total = holds[hold_id]
        installed, drained = total.pop("installed"), total.pop("drained")
        state = "released" if installed == 0 else "holding" if installed == seen else "partial"
        if state != "released":
            total["released_at"] = None
        out.append({
            **total,
            "routes": sorted(total["routes"]),
            "ended": sorted(total["ended"]),
            "state": state,
            "acked": seen >= expected and installed == seen and drained == seen,
            "workers": {"expected": expected, "seen": seen, "installed": installed, "drained": drained},
            "oldest_wait": round(total["oldest_wait"], 3),
            "lease_left": round(max(0.0, total["until"] - now), 3) if state != "released" else 0.0,
        })
    return {
        "expected_workers": expected,
        "workers": [
            {
                "pid": worker.get("pid"),
                "version": worker.get("version"),
                "age": round(max(0.0, now - float(worker.get("written_at") or now)), 3),
                "held": sum(int(entry.get("held") or 0) for entry in worker.get("holds", ()) if entry.get("released_at") is None),
            }
            for worker in workers
        ],
        "holds": out,
    }
