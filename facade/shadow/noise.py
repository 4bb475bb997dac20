"""Noise cancellation for shadow comparisons, after Twitter's Diffy.

For a sample of safe requests the primary is asked twice. Fields on which the primary disagrees
with itself (timestamps, request ids, random order) are noise. Per endpoint and field we count how
often the candidate differs from the primary and how often the primary differs from itself, and
call a field a real difference only when the candidate rate clearly exceeds the noise rate, by a
relative and an absolute threshold. Within one request, a field the primary disagreed with itself
on is noise for that request whatever the totals say. Pure: counts in, verdicts out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["EndpointNoise", "FieldCounts", "NoiseModel", "NoiseThresholds", "Verdict", "significant"]


@dataclass(frozen=True, slots=True)
class NoiseThresholds:
    """`relative`: percent of the candidate rate not explained by noise; `absolute`: percentage points."""

    relative: float = 20.0
    absolute: float = 0.03


@dataclass(slots=True)
class FieldCounts:
    """How often a field differed: candidate vs primary, and primary vs primary."""

    candidate: int = 0
    noise: int = 0


@dataclass(slots=True)
class EndpointNoise:
    """Counts for one endpoint: comparisons, noise probes, and per-field differences."""

    compared: int = 0
    probes: int = 0
    fields: dict[str, FieldCounts] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The differing fields of one comparison split into real differences and noise."""

    real: frozenset[str]
    noise: frozenset[str]

    @property
    def matches(self) -> bool:
        return not self.real


def significant(candidate: int, compared: int, noise: int, probes: int, thresholds: NoiseThresholds) -> bool:
    """Whether `candidate` differences in `compared` requests clearly exceed `noise` in `probes`."""
    if candidate <= 0 or compared <= 0:
        return False
    candidate_rate = 100.0 * candidate / compared
    noise_rate = 100.0 * noise / probes if probes > 0 else 0.0
    absolute = candidate_rate - noise_rate
    if absolute <= thresholds.absolute:
        return False
    return 100.0 * absolute / candidate_rate > thresholds.relative


def _ancestors(path: str) -> Iterable[str]:
    """`$.a[*].b` → `$.a[*].b`, `$.a[*]`, `$.a`, `$`: a noisy parent makes its children noisy."""
    yield path
    end = len(path)
    while end > 1:
        cut = max(path.rfind(".", 0, end), path.rfind("[", 0, end))
        if cut <= 0:
            break
        end = cut
        yield path[:end]


class NoiseModel:
    """Running per-endpoint, per-field counts and the verdicts drawn from them."""

    def __init__(self, thresholds: NoiseThresholds | None = None) -> None:
        self.thresholds = thresholds or NoiseThresholds()
        self.endpoints: dict[str, EndpointNoise] = {}

    @classmethod
    def from_counts(cls, endpoints: Mapping[str, EndpointNoise], thresholds: NoiseThresholds | None = None) -> NoiseModel:
        model = cls(thresholds)
        model.endpoints = dict(endpoints)
        return model

    def observe(self, endpoint: str, candidate_fields: Iterable[str], noise_fields: Iterable[str] | None) -> None:
        """Count one comparison; `noise_fields` is None when the primary was not asked twice."""
        stats = self.endpoints.setdefault(endpoint, EndpointNoise())
        stats.compared += 1
        for name in set(candidate_fields):
            stats.fields.setdefault(name, FieldCounts()).candidate += 1
        if noise_fields is not None:
            stats.probes += 1
            for name in set(noise_fields):
                stats.fields.setdefault(name, FieldCounts()).noise += 1

    def is_real(self, endpoint: str, name: str) -> bool:
        """A field is real when it, and each parent path, differs clearly more than noise."""
        stats = self.endpoints.get(endpoint)
        if stats is None:
            return True
        for path in _ancestors(name):
            counts = stats.fields.get(path)
            if counts is None or counts.noise == 0:
                continue
            own = stats.fields.get(name)
            candidate = own.candidate if own is not None else 0
            if not significant(candidate, stats.compared, counts.noise, stats.probes, self.thresholds):
                return False
        return True

    def verdict(self, endpoint: str, candidate_fields: Iterable[str], request_noise: Iterable[str] = ()) -> Verdict:
        """Split one comparison's differing fields into real and noise."""
        in_request = set(request_noise)
        real: set[str] = set()
        noise: set[str] = set()
        for name in set(candidate_fields):
            if any(p in in_request for p in _ancestors(name)) or not self.is_real(endpoint, name):
                noise.add(name)
            else:
                real.add(name)
        return Verdict(frozenset(real), frozenset(noise))
