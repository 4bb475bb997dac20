"""Gate verdicts: pure functions over readings → pass, fail or inconclusive, with a reason.

Nothing here does I/O: `cutover.readings` fills a `Readings` from the façade's admin API, the
shadow store, `cdc` status and verify, and a command; the functions below judge it. Too little
traffic is always inconclusive, never a pass: a step passes only on evidence. `decide` turns the
verdicts and the soak into the runner's next move (advance, soak on, fail, pause).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cutover.plan import (
    CdcGate,
    CommandGate,
    ErrorRateGate,
    Gates,
    LatencyGate,
    OnInconclusive,
    ShadowGate,
    Soak,
    VerifyGate,
)

__all__ = [
    "CdcReading",
    "CommandReading",
    "Decision",
    "Readings",
    "RouteTraffic",
    "ShadowReading",
    "UpstreamTraffic",
    "Verdict",
    "VerifyReading",
    "cdc_verdict",
    "command_verdict",
    "decide",
    "error_rate_verdict",
    "evaluate",
    "latency_verdict",
    "mean",
    "overall",
    "quantile",
    "shadow_verdict",
    "verify_verdict",
]

Result = Literal["pass", "fail", "inconclusive"]
PASS: Result = "pass"
FAIL: Result = "fail"
INCONCLUSIVE: Result = "inconclusive"


@dataclass(frozen=True)
class UpstreamTraffic:
    """Requests, 5xx answers and the latency histogram (cumulative `(le, count)`) of one upstream."""

    requests: int = 0
    errors: int = 0
    buckets: tuple[tuple[float, int], ...] = ()

    def minus(self, earlier: UpstreamTraffic) -> UpstreamTraffic:
        """The traffic since `earlier` (counters that went backwards, a restarted replica, count from 0)."""
        if self.requests < earlier.requests:
            return self
        before = dict(earlier.buckets)
        return UpstreamTraffic(
            self.requests - earlier.requests,
            max(0, self.errors - earlier.errors),
            tuple((bound, max(0, count - before.get(bound, 0))) for bound, count in self.buckets),
        )

    def plus(self, other: UpstreamTraffic) -> UpstreamTraffic:
        mine, theirs = dict(self.buckets), dict(other.buckets)
        bounds = sorted(set(mine) | set(theirs))
        return UpstreamTraffic(
            self.requests + other.requests,
            self.errors + other.errors,
            tuple((bound, mine.get(bound, 0) + theirs.get(bound, 0)) for bound in bounds),
        )

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def as_dict(self) -> dict[str, Any]:
        p99 = quantile(0.99, self.buckets)
        return {"requests": self.requests, "errors": self.errors, "p99_seconds": p99}


@dataclass(frozen=True)
class RouteTraffic:
    """The traffic of the moved route(s), per upstream."""

    upstreams: Mapping[str, UpstreamTraffic] = field(default_factory=dict)

    def of(self, name: str) -> UpstreamTraffic:
        return self.upstreams.get(name, UpstreamTraffic())

    @property
    def requests(self) -> int:
        return sum(item.requests for item in self.upstreams.values())

    def minus(self, earlier: RouteTraffic) -> RouteTraffic:
        return RouteTraffic({name: item.minus(earlier.of(name)) for name, item in self.upstreams.items()})

    def plus(self, other: RouteTraffic) -> RouteTraffic:
        names = list(dict.fromkeys([*self.upstreams, *other.upstreams]))
        return RouteTraffic({name: self.of(name).plus(other.of(name)) for name in names})

    def as_dict(self) -> dict[str, Any]:
        return {name: item.as_dict() for name, item in self.upstreams.items()}


@dataclass(frozen=True)
class ShadowReading:
    """Shadow comparisons of the step's window: compared, and mismatching with noise removed."""

    compared: int
    mismatched: int


@dataclass(frozen=True)
class CdcReading:
    lag_seconds: float | None
    dead_letters: int


@dataclass(frozen=True)
class VerifyReading:
    identical: bool
    age_seconds: float
    summary: str = ""


@dataclass(frozen=True)
class CommandReading:
    exit_code: int | None  # None: it timed out or could not start
    output: str = ""


@dataclass(frozen=True)
class Readings:
    """Everything the gates judge at one moment of a step.

    `window` is the route's traffic since the step's change was served by every replica;
    `reference` the traffic since the run started (the old upstream's baseline once the window
    has too little of it). A source that could not be read is in `unreadable` with the reason.
    """

    window: RouteTraffic = RouteTraffic()
    reference: RouteTraffic = RouteTraffic()
    shadow: ShadowReading | None = None
    cdc: CdcReading | None = None
    verify: VerifyReading | None = None
    command: CommandReading | None = None
    unreadable: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """One gate's result, why, and the numbers it judged."""

    gate: str
    result: Result
    reason: str
    reading: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"gate": self.gate, "result": self.result, "reason": self.reason, "reading": dict(self.reading)}


def quantile(q: float, buckets: Sequence[tuple[float, int]]) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated within its bucket (as Prometheus does)."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # beyond the last finite bound: the best known lower limit
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return ordered[-1][0]


def expected_drain(rate: float, buckets: Sequence[tuple[float, int]], *, steps: int = 64) -> float:
    """How long, expected, until every request in flight at a random moment has finished, for
    requests arriving at `rate` per second whose latencies follow the cumulative histogram
    `buckets` (each bucket's count spread evenly over it; the overflow at the last finite bound).

    With Poisson arrivals and independent latencies (M/G/∞), the requests still in flight `r`
    seconds after that moment are Poisson with mean `rate · T(r)`, `T(r) = ∫_r^∞ S(x) dx`, `S` the
    latency's survival function; so the wait is `∫_0^∞ (1 − e^(−rate · T(r))) dr`. A rare slow
    request counts as rarely as it occurs, where the top quantile of the latencies would take it
    for every drain; 0 when nothing arrives or nothing was counted."""
    ordered = sorted(buckets)
    if rate <= 0 or not ordered or ordered[-1][1] <= 0:
        return 0.0
    total = ordered[-1][1]
    # Survival at each bucket's bounds: piecewise linear between them.
    edges, survival = [0.0], [1.0]
    for bound, count in ordered:
        if math.isinf(bound):
            break
        edges.append(bound)
        survival.append(1.0 - count / total)
        if count >= total:
            break
    if survival[-1] > 0:  # the overflow, at the last finite bound: survival drops to 0 there
        edges.append(edges[-1])
        survival.append(0.0)
    points, values = [], []
    for (a, sa), (b, sb) in zip(zip(edges, survival), zip(edges[1:], survival[1:])):
        for i in range(steps):
            t = i / steps
            points.append(a + (b - a) * t)
            values.append(sa + (sb - sa) * t)
    points.append(edges[-1])
    values.append(0.0)
    # T at every point (from the top), then the wait, both by the trapezoid rule.
    tail = [0.0] * len(points)
    for i in range(len(points) - 2, -1, -1):
        tail[i] = tail[i + 1] + (points[i + 1] - points[i]) * (values[i] + values[i + 1]) / 2
    waiting = [1.0 - math.exp(-rate * t) for t in tail]
    return sum((points[i + 1] - points[i]) * (waiting[i] + waiting[i + 1]) / 2 for i in range(len(points) - 1))


def _pct(value: float) -> str:
    return f"{value * 100:.2f}%"


def shadow_verdict(gate: ShadowGate, reading: ShadowReading | None) -> Verdict:
    name = "shadow_mismatch"
    if reading is None:
        return Verdict(name, INCONCLUSIVE, "no shadow comparisons could be read")
    numbers = {"compared": reading.compared, "mismatched": reading.mismatched}
    if reading.compared < gate.min_compared:
        return Verdict(name, INCONCLUSIVE, f"{reading.compared} comparisons in this step, fewer than {gate.min_compared}", numbers)
    rate = reading.mismatched / reading.compared
    numbers["rate"] = rate
    if rate * 100 > gate.max_mismatch:
        return Verdict(name, FAIL, f"{_pct(rate)} of {reading.compared} comparisons mismatch (noise removed), over {gate.max_mismatch:g}%", numbers)
    return Verdict(name, PASS, f"{_pct(rate)} of {reading.compared} comparisons mismatch, within {gate.max_mismatch:g}%", numbers)


def _baseline(readings: Readings, old: str, least: int) -> tuple[UpstreamTraffic | None, str]:
    """The old upstream's traffic to compare with: this step's, else the whole run's."""
    window = readings.window.of(old)
    if window.requests >= least:
        return window, "this step"
    reference = readings.reference.of(old)
    if reference.requests >= least:
        return reference, "this run"
    return None, ""


def error_rate_verdict(gate: ErrorRateGate, readings: Readings, *, target: str, old: str) -> Verdict:
    name = "error_rate"
    new = readings.window.of(target)
    numbers: dict[str, Any] = {"target_requests": new.requests, "target_errors": new.errors}
    if new.requests < gate.min_requests:
        return Verdict(name, INCONCLUSIVE, f"{new.requests} requests to {target} in this step, fewer than {gate.min_requests}", numbers)
    baseline, scope = _baseline(readings, old, gate.min_requests)
    new_rate = new.errors / new.requests
    numbers["target_rate"] = new_rate
    if baseline is None:
        return Verdict(name, INCONCLUSIVE, f"{old} has fewer than {gate.min_requests} requests to compare {target}'s error rate with", numbers)
    old_rate = baseline.errors / baseline.requests
    numbers.update(old_rate=old_rate, old_requests=baseline.requests)
    text = f"{target} {_pct(new_rate)} errors of {new.requests}, {old} {_pct(old_rate)} ({scope})"
    if (new_rate - old_rate) * 100 > gate.max_increase:
        return Verdict(name, FAIL, f"{text}: more than {gate.max_increase:g} points worse", numbers)
    return Verdict(name, PASS, f"{text}: within {gate.max_increase:g} points", numbers)


def latency_verdict(gate: LatencyGate, readings: Readings, *, target: str, old: str) -> Verdict:
    name = "latency"
    new = readings.window.of(target)
    numbers: dict[str, Any] = {"target_requests": new.requests}
    if new.requests < gate.min_requests:
        return Verdict(name, INCONCLUSIVE, f"{new.requests} requests to {target} in this step, fewer than {gate.min_requests}", numbers)
    baseline, scope = _baseline(readings, old, gate.min_requests)
    new_p99 = quantile(0.99, new.buckets)
    old_p99 = quantile(0.99, baseline.buckets) if baseline is not None else None
    numbers.update(target_p99=new_p99, old_p99=old_p99)
    if new_p99 is None or old_p99 is None or old_p99 <= 0:
        return Verdict(name, INCONCLUSIVE, f"no latency histogram of {old} with {gate.min_requests} requests to compare with", numbers)
    ratio = new_p99 / old_p99
    numbers["ratio"] = ratio
    text = f"p99 {target} {new_p99 * 1000:.1f} ms / {old} {old_p99 * 1000:.1f} ms ({scope}) = {ratio:.2f}"
    if ratio > gate.max_p99_ratio:
        return Verdict(name, FAIL, f"{text}, over {gate.max_p99_ratio:g}", numbers)
    return Verdict(name, PASS, f"{text}, within {gate.max_p99_ratio:g}", numbers)


def cdc_verdict(gate: CdcGate, reading: CdcReading | None) -> Verdict:
    name = "cdc"
    if reading is None:
        return Verdict(name, INCONCLUSIVE, "no CDC status could be read")
    numbers = {"lag_seconds": reading.lag_seconds, "dead_letters": reading.dead_letters}
    if reading.dead_letters > gate.max_dead_letters:
        return Verdict(name, FAIL, f"{reading.dead_letters} dead-lettered event(s), more than {gate.max_dead_letters}", numbers)
    if reading.lag_seconds is None:
        return Verdict(name, INCONCLUSIVE, "the applier has applied nothing streamed yet, so its lag is unknown", numbers)
    if reading.lag_seconds > gate.max_lag:
        return Verdict(name, FAIL, f"lag {reading.lag_seconds:.1f}s, over {gate.max_lag:g}s", numbers)
    return Verdict(name, PASS, f"lag {reading.lag_seconds:.1f}s, {reading.dead_letters} dead letters", numbers)


def verify_verdict(gate: VerifyGate, reading: VerifyReading | None) -> Verdict:
    name = "verify"
    if reading is None:
        return Verdict(name, INCONCLUSIVE, "no verify result")
    numbers = {"identical": reading.identical, "age_seconds": reading.age_seconds}
    if reading.age_seconds > gate.max_age:
        return Verdict(name, INCONCLUSIVE, f"the last verify is {reading.age_seconds:.0f}s old, older than {gate.max_age:g}s", numbers)
    if not reading.identical:
        return Verdict(name, FAIL, f"verify found differences: {reading.summary}", numbers)
    return Verdict(name, PASS, f"verify clean ({reading.summary or 'identical'}, {reading.age_seconds:.0f}s ago)", numbers)


def command_verdict(gate: CommandGate, reading: CommandReading | None) -> Verdict:
    name = "command"
    if reading is None:
        return Verdict(name, INCONCLUSIVE, f"`{gate.run}` has not run")
    last = reading.output.strip().splitlines()[-1:] if reading.output.strip() else []
    tail = f": {last[0][:200]}" if last else ""
    numbers = {"exit_code": reading.exit_code}
    if reading.exit_code == 0:
        return Verdict(name, PASS, f"`{gate.run}` exited 0{tail}", numbers)
    if reading.exit_code == 1:
        return Verdict(name, FAIL, f"`{gate.run}` exited 1{tail}", numbers)
    how = "timed out or did not start" if reading.exit_code is None else f"exited {reading.exit_code}"
    return Verdict(name, INCONCLUSIVE, f"`{gate.run}` {how}{tail}", numbers)


def evaluate(gates: Gates, readings: Readings, *, target: str, old: str, weight: float | None = None) -> list[Verdict]:
    """Every configured gate's verdict, in the plan's order.

    Given the step's `weight`, a gate with nothing to judge there passes as not applicable: the
    error-rate and latency gates at 0% (the target serves nothing; a shadow step's own gate is
    the shadow one), the shadow gate at 100% (nothing is left on the old upstream to mirror)."""
    verdicts: list[Verdict] = []
    for name in gates.names():
        gate = getattr(gates, name)
        if weight is not None and weight <= 0 and isinstance(gate, ErrorRateGate | LatencyGate):
            verdicts.append(Verdict(name, PASS, f"not applicable at 0%: {target} serves none of the route"))
            continue
        if weight is not None and weight >= 100 and isinstance(gate, ShadowGate):
            verdicts.append(Verdict(name, PASS, f"not applicable at 100%: nothing is left on {old} to mirror"))
            continue
        if name in readings.unreadable:
            verdicts.append(Verdict(name, INCONCLUSIVE, f"cannot read its source: {readings.unreadable[name]}"))
            continue
        if isinstance(gate, ShadowGate):
            verdicts.append(shadow_verdict(gate, readings.shadow))
        elif isinstance(gate, ErrorRateGate):
            verdicts.append(error_rate_verdict(gate, readings, target=target, old=old))
        elif isinstance(gate, LatencyGate):
            verdicts.append(latency_verdict(gate, readings, target=target, old=old))
        elif isinstance(gate, CdcGate):
            verdicts.append(cdc_verdict(gate, readings.cdc))
        elif isinstance(gate, VerifyGate):
            verdicts.append(verify_verdict(gate, readings.verify))
        elif isinstance(gate, CommandGate):
            verdicts.append(command_verdict(gate, readings.command))
    return verdicts


def overall(verdicts: Sequence[Verdict]) -> Result:
    """Fail if any gate fails, else inconclusive if any is, else pass (no gates: pass)."""
    results = {verdict.result for verdict in verdicts}
    if FAIL in results:
        return FAIL
    if INCONCLUSIVE in results:
        return INCONCLUSIVE
    return PASS


@dataclass(frozen=True)
class Decision:
    """The runner's next move in a step: advance, soak (read again later), fail or pause."""

    action: Literal["advance", "soak", "fail", "pause"]
    reason: str


def decide(
    verdicts: Sequence[Verdict], soak: Soak, on_inconclusive: OnInconclusive, *, elapsed: float, requests: int
) -> Decision:
    """What to do after a reading `elapsed` seconds into a step that has seen `requests`."""
    result = overall(verdicts)
    if result == FAIL:
        failed = "; ".join(f"{v.gate}: {v.reason}" for v in verdicts if v.result == FAIL)
        return Decision("fail", failed)
    waiting: list[str] = []
    if elapsed < soak.min_time:
        waiting.append(f"{elapsed:.0f}s of the {soak.min_time:g}s soak")
    if requests < soak.min_requests:
        waiting.append(f"{requests} of {soak.min_requests} requests")
    if result == INCONCLUSIVE:
        waiting.extend(f"{v.gate}: {v.reason}" for v in verdicts if v.result == INCONCLUSIVE)
    if not waiting:
        return Decision("advance", "soak done and every gate passes" if verdicts else "soak done (no gates)")
    reason = "; ".join(waiting)
    if elapsed >= on_inconclusive.max_soak:
        text = f"still inconclusive after {on_inconclusive.max_soak:g}s: {reason}"
        return Decision("pause" if on_inconclusive.then == "pause" else "fail", text)
    return Decision("soak", reason)
