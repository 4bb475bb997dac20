from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from facade.shadow.noise import NoiseModel, NoiseThresholds, significant

EP = "GET /api/products/{id}"


def test_field_without_noise_is_real() -> None:
    model = NoiseModel()
    for _ in range(10):
        model.observe(EP, {"$.price"}, set())
    assert model.is_real(EP, "$.price")
    assert not model.verdict(EP, {"$.price"}).matches


def test_timestamp_the_primary_disagrees_with_itself_on_is_noise_everywhere() -> None:
    model = NoiseModel()
    # Every candidate answer differs in updated_at; one request in ten was probed twice and the
    # primary differed from itself there too.
    for i in range(100):
        model.observe(EP, {"$.updated_at", "$.price"} if i < 5 else {"$.updated_at"}, {"$.updated_at"} if i % 10 == 0 else None)
    verdict = model.verdict(EP, {"$.updated_at"})
    assert verdict.matches and verdict.noise == {"$.updated_at"}
    assert model.verdict(EP, {"$.updated_at", "$.price"}).real == {"$.price"}


def test_field_noisy_in_this_request_is_noise_for_the_request() -> None:
    model = NoiseModel()
    model.observe(EP, {"$.results"}, None)
    assert model.verdict(EP, {"$.results[*].id"}, request_noise={"$.results"}).matches
    assert not model.verdict(EP, {"$.results[*].id"}).matches


def test_noisy_parent_makes_children_noise() -> None:
    model = NoiseModel()
    for _ in range(20):
        model.observe(EP, {"$.meta.took"}, {"$.meta"})
    assert not model.is_real(EP, "$.meta.took")


def test_candidate_clearly_above_noise_is_real_with_both_thresholds() -> None:
    t = NoiseThresholds(relative=20.0, absolute=3.0)
    assert significant(50, 100, 10, 100, t)  # 50% vs 10%
    assert not significant(11, 100, 10, 100, t)  # 1 point above noise: under the absolute bar
    assert not significant(110, 1000, 100, 1000, NoiseThresholds(relative=20.0, absolute=0.5))  # 9% relative
    assert not significant(0, 100, 0, 0, t)
    assert significant(5, 100, 0, 0, t)  # no probe yet: no known noise


@given(st.integers(0, 200), st.integers(1, 200), st.integers(0, 200), st.integers(1, 200))
def test_property_more_noise_never_makes_a_field_more_real(cand: int, compared: int, noise: int, probes: int) -> None:
    cand = min(cand, compared)
    noise = min(noise, probes)
    t = NoiseThresholds()
    if significant(cand, compared, min(noise + 1, probes), probes, t):
        assert significant(cand, compared, noise, probes, t)
