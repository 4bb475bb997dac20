"""The gates' verdicts and the runner's decision: pure, without servers."""

from __future__ import annotations

import bisect
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cutover.gates import (
    CdcReading,
    CommandReading,
    Readings,
    RouteTraffic,
    ShadowReading,
    UpstreamTraffic,
    Verdict,
    VerifyReading,
    cdc_verdict,
    command_verdict,
    decide,
    error_rate_verdict,
    evaluate,
    expected_drain,
    latency_verdict,
    overall,
    quantile,
    shadow_verdict,
    verify_verdict,
)
from cutover.plan import CdcGate, CommandGate, ErrorRateGate, Gates, LatencyGate, OnInconclusive, ShadowGate, Soak, VerifyGate

FAST = ((0.01, 0), (0.05, 0), (0.1, 0), (float("inf"), 0))


def histogram(values: list[float], bounds: tuple[float, ...] = (0.01, 0.05, 0.1, 0.5, 1.0)) -> tuple[tuple[float, int], ...]:
    return tuple((bound, sum(1 for value in values if value <= bound)) for bound in (*bounds, float("inf")))


def traffic(**upstreams: UpstreamTraffic) -> RouteTraffic:
    return RouteTraffic(upstreams)


# -- shadow -------------------------------------------------------------------------------------


def test_shadow_with_too_few_comparisons_is_inconclusive_even_when_all_match() -> None:
    verdict = shadow_verdict(ShadowGate(max_mismatch=1, min_compared=50), ShadowReading(49, 0))
    assert verdict.result == "inconclusive" and "49 comparisons" in verdict.reason


@pytest.mark.parametrize(("mismatched", "result"), [(0, "pass"), (1, "pass"), (2, "fail"), (100, "fail")])
def test_shadow_mismatch_rate_against_its_limit(mismatched: int, result: str) -> None:
    assert shadow_verdict(ShadowGate(max_mismatch=1, min_compared=50), ShadowReading(100, mismatched)).result == result


def test_no_shadow_reading_is_inconclusive() -> None:
    assert shadow_verdict(ShadowGate(), None).result == "inconclusive"


# -- error rate -----------------------------------------------------------------------------------


def test_error_rate_compares_with_the_old_upstream_in_the_same_window() -> None:
    gate = ErrorRateGate(max_increase=1, min_requests=100)
    same = Readings(window=traffic(catalog=UpstreamTraffic(200, 4), monolith=UpstreamTraffic(800, 12)))
    assert error_rate_verdict(gate, same, target="catalog", old="monolith").result == "pass"  # 2% vs 1.5%
    worse = Readings(window=traffic(catalog=UpstreamTraffic(200, 10), monolith=UpstreamTraffic(800, 12)))
    verdict = error_rate_verdict(gate, worse, target="catalog", old="monolith")
    assert verdict.result == "fail" and "5.00%" in verdict.reason and "1.50%" in verdict.reason


def test_error_rate_with_too_few_target_requests_is_inconclusive_never_pass() -> None:
    readings = Readings(window=traffic(catalog=UpstreamTraffic(99, 0), monolith=UpstreamTraffic(10_000, 0)))
    assert error_rate_verdict(ErrorRateGate(min_requests=100), readings, target="catalog", old="monolith").result == "inconclusive"


def test_error_rate_at_100_percent_uses_the_old_upstreams_rate_over_the_run() -> None:
    gate = ErrorRateGate(max_increase=1, min_requests=50)
    readings = Readings(
        window=traffic(catalog=UpstreamTraffic(500, 5)),
        reference=traffic(catalog=UpstreamTraffic(900, 9), monolith=UpstreamTraffic(2000, 20)),
    )
    verdict = error_rate_verdict(gate, readings, target="catalog", old="monolith")
    assert verdict.result == "pass" and "this run" in verdict.reason


def test_error_rate_without_any_old_traffic_is_inconclusive() -> None:
    readings = Readings(window=traffic(catalog=UpstreamTraffic(500, 0)))
    assert error_rate_verdict(ErrorRateGate(min_requests=50), readings, target="catalog", old="monolith").result == "inconclusive"


# -- latency ----------------------------------------------------------------------------------------


def test_quantile_interpolates_within_the_bucket() -> None:
    buckets = ((0.1, 50), (0.2, 100), (float("inf"), 100))
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.75, buckets) == pytest.approx(0.15)
    assert quantile(0.99, ()) is None
    assert quantile(0.99, ((0.1, 0), (float("inf"), 10))) == 0.1  # beyond the last bound: that bound


@given(st.lists(st.floats(min_value=0, max_value=2), min_size=1, max_size=300), st.floats(min_value=0.01, max_value=0.99))
def test_quantile_is_monotone_in_q_and_within_the_bounds(values: list[float], q: float) -> None:
    buckets = histogram(values)
    low, high = quantile(q / 2, buckets), quantile(q, buckets)
    assert low is not None and high is not None
    assert low <= high + 1e-12
    assert 0 <= high <= 1.0


def test_latency_ratio_of_p99s() -> None:
    gate = LatencyGate(max_p99_ratio=1.5, min_requests=10)
    fast = UpstreamTraffic(100, 0, histogram([0.005] * 100))
    slow = UpstreamTraffic(100, 0, histogram([0.3] * 100))
    ok = latency_verdict(gate, Readings(window=traffic(catalog=fast, monolith=fast)), target="catalog", old="monolith")
    assert ok.result == "pass" and ok.reading["ratio"] == pytest.approx(1.0)
    bad = latency_verdict(gate, Readings(window=traffic(catalog=slow, monolith=fast)), target="catalog", old="monolith")
    assert bad.result == "fail" and bad.reading["ratio"] > 1.5


def test_latency_with_too_few_requests_is_inconclusive() -> None:
    few = UpstreamTraffic(3, 0, histogram([0.001] * 3))
    readings = Readings(window=traffic(catalog=few, monolith=few))
    assert latency_verdict(LatencyGate(min_requests=10), readings, target="catalog", old="monolith").result == "inconclusive"


# -- cdc, verify, command -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reading", "result"),
    [
        (CdcReading(0.5, 0), "pass"),
        (CdcReading(9.0, 0), "fail"),
        (CdcReading(0.5, 1), "fail"),
        (CdcReading(None, 0), "inconclusive"),
        (None, "inconclusive"),
    ],
)
def test_cdc_lag_and_dead_letters(reading: CdcReading | None, result: str) -> None:
    assert cdc_verdict(CdcGate(max_lag=5, max_dead_letters=0), reading).result == result


@pytest.mark.parametrize(
    ("reading", "result"),
    [
        (VerifyReading(True, 10), "pass"),
        (VerifyReading(False, 10, "catalog.products 2 mismatched"), "fail"),
        (VerifyReading(True, 1000), "inconclusive"),
        (None, "inconclusive"),
    ],
)
def test_verify_clean_and_young_enough(reading: VerifyReading | None, result: str) -> None:
    assert verify_verdict(VerifyGate(max_age=600), reading).result == result


@pytest.mark.parametrize(("code", "result"), [(0, "pass"), (1, "fail"), (2, "inconclusive"), (None, "inconclusive"), (127, "inconclusive")])
def test_command_exit_codes(code: int | None, result: str) -> None:
    verdict = command_verdict(CommandGate(run="./smoke.sh"), CommandReading(code, "checked 12 pages\n"))
    assert verdict.result == result
    assert "./smoke.sh" in verdict.reason


# -- all gates, and the decision ---------------------------------------------------------------------


def test_unreadable_source_is_inconclusive_with_its_reason() -> None:
    gates = Gates(cdc=CdcGate(), error_rate=ErrorRateGate(min_requests=1))
    readings = Readings(
        window=traffic(catalog=UpstreamTraffic(10, 0), monolith=UpstreamTraffic(10, 0)),
        unreadable={"cdc": "cannot connect to the target database"},
    )
    verdicts = evaluate(gates, readings, target="catalog", old="monolith")
    assert [(v.gate, v.result) for v in verdicts] == [("error_rate", "pass"), ("cdc", "inconclusive")]
    assert "cannot connect" in verdicts[1].reason


def test_gates_with_nothing_to_judge_at_the_steps_weight_pass_as_not_applicable() -> None:
    gates = Gates(shadow_mismatch=ShadowGate(min_compared=10), error_rate=ErrorRateGate(min_requests=10),
                  latency=LatencyGate(min_requests=10))
    readings = Readings(window=traffic(monolith=UpstreamTraffic(50, 0)), shadow=ShadowReading(0, 0))
    at_shadow = evaluate(gates, readings, target="catalog", old="monolith", weight=0)
    assert [(v.gate, v.result) for v in at_shadow] == [("shadow_mismatch", "inconclusive"), ("error_rate", "pass"), ("latency", "pass")]
    assert "not applicable at 0%" in at_shadow[1].reason
    at_full = evaluate(gates, readings, target="catalog", old="monolith", weight=100)
    assert (at_full[0].result, at_full[1].result) == ("pass", "inconclusive")
    assert "nothing is left on monolith to mirror" in at_full[0].reason
    between = evaluate(gates, readings, target="catalog", old="monolith", weight=25)
    assert [v.result for v in between] == ["inconclusive"] * 3


RESULTS = st.sampled_from(["pass", "fail", "inconclusive"])


@given(st.lists(RESULTS, max_size=6))
def test_overall_is_the_worst_verdict(results: list[str]) -> None:
    verdicts = [Verdict(f"g{i}", r, "") for i, r in enumerate(results)]  # type: ignore[arg-type]
    expected = "fail" if "fail" in results else "inconclusive" if "inconclusive" in results else "pass"
    assert overall(verdicts) == expected


@given(
    st.lists(RESULTS, max_size=5),
    st.floats(min_value=0, max_value=100),
    st.integers(min_value=0, max_value=500),
)
def test_decide_never_advances_without_evidence(results: list[str], elapsed: float, requests: int) -> None:
    soak = Soak(min_time=10, min_requests=100)
    verdicts = [Verdict(f"g{i}", r, "") for i, r in enumerate(results)]  # type: ignore[arg-type]
    decision = decide(verdicts, soak, OnInconclusive(max_soak=60, then="pause"), elapsed=elapsed, requests=requests)
    if decision.action == "advance":
        assert all(r == "pass" for r in results) and elapsed >= 10 and requests >= 100
    if "fail" in results:
        assert decision.action == "fail"
    elif elapsed >= 60 and (set(results) - {"pass"} or elapsed < 10 or requests < 100):
        assert decision.action == "pause"
    elif decision.action != "advance":
        assert decision.action == "soak"


def test_decide_too_little_traffic_keeps_soaking_then_pauses() -> None:
    soak = Soak(min_time=1, min_requests=100)
    then = OnInconclusive(max_soak=30, then="pause")
    assert decide([], soak, then, elapsed=5, requests=10).action == "soak"
    paused = decide([], soak, then, elapsed=31, requests=10)
    assert paused.action == "pause" and "10 of 100 requests" in paused.reason
    assert decide([], soak, OnInconclusive(max_soak=30, then="fail"), elapsed=31, requests=10).action == "fail"
    assert decide([], soak, then, elapsed=5, requests=100).action == "advance"


def test_traffic_since_a_baseline() -> None:
    before = UpstreamTraffic(10, 1, ((0.1, 8), (float("inf"), 10)))
    after = UpstreamTraffic(30, 2, ((0.1, 25), (float("inf"), 30)))
    assert after.minus(before) == UpstreamTraffic(20, 1, ((0.1, 17), (float("inf"), 20)))
    # A replica restarted (its counters went backwards): everything it has counted is new.
    assert before.minus(after) == before
    assert RouteTraffic({"a": after}).plus(RouteTraffic({"a": before, "b": before})).of("a").requests == 40


def test_the_expected_drain_follows_from_the_rate_and_the_latencies() -> None:
    # Every request takes 12 ms (one narrow bucket), 200/s: the wait is L − (1 − e^(−λL))/λ.
    narrow = [(0.0119, 0), (0.0121, 1000), (float("inf"), 1000)]
    assert expected_drain(200, narrow) == pytest.approx(0.012 - (1 - math.exp(-2.4)) / 200, rel=1e-3)
    # Exponential latencies (mean 10 ms) in 1 ms buckets: residuals are exponential too, so the
    # wait is ∫ (1 − exp(−λμ e^(−r/μ))) dr.
    rng = random.Random(1)
    values = sorted(rng.expovariate(100) for _ in range(100_000))
    fine = [(ms / 1000, bisect.bisect_right(values, ms / 1000)) for ms in range(1, 200)] + [(float("inf"), len(values))]
    exact = sum((1 - math.exp(-2.0 * math.exp(-(i * 1e-5) / 0.01))) * 1e-5 for i in range(20_000))
    assert expected_drain(200, fine) == pytest.approx(exact, rel=0.02)
    # A rare slow write counts as rarely as it comes: 1 in 100 at 200 ms moves the wait by
    # milliseconds, where the top quantiles would say 200 ms.
    rare = [(0.0119, 0), (0.0121, 990), (0.199, 990), (0.201, 1000), (float("inf"), 1000)]
    assert expected_drain(200, narrow) < expected_drain(200, rare) < 0.05
    assert expected_drain(100, rare) < expected_drain(200, rare)  # more in flight, a longer wait
    # Beyond the last finite bound counts at that bound; nothing in flight, nothing to wait for.
    assert expected_drain(200, [(0.0119, 0), (0.0121, 0), (float("inf"), 1000)]) == pytest.approx(
        expected_drain(200, narrow), rel=0.05)
    assert expected_drain(0, narrow) == 0.0 and expected_drain(200, []) == 0.0
    assert expected_drain(200, [(0.01, 0), (float("inf"), 0)]) == 0.0
