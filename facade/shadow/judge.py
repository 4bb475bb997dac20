"""Judging a candidate's answer against the primary's: the pure core of shadowing.

`judge` is shared by live shadowing and offline replay: it compares the primary's reply with the
candidate's (and, for the noise sample, with the primary's second reply), updates the noise
model, redacts, and returns the `ComparisonRecord` to store.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from facade.config import CompareConfig, RedactConfig
from facade.shadow.compare import Comparison, Reply, compare, compare_all
from facade.shadow.noise import NoiseModel, NoiseThresholds
from facade.shadow.redact import Redactor, scrub_urls
from facade.shadow.rules import CompareRules, Normalizer
from facade.shadow.store import ComparisonRecord, DiffRecord, SampleRecord

__all__ = ["RouteRules", "compare_pair", "failure_record", "judge", "route_rules"]

SAMPLE_BODY_CAP = 16 * 1024


@dataclass(frozen=True, slots=True)
class RouteRules:
    """Everything `judge` needs from a route's shadow configuration, compiled once."""

    compare: CompareRules
    thresholds: NoiseThresholds
    redactor: Redactor


def route_rules(compare_config: CompareConfig | None = None, redact_config: RedactConfig | None = None, *, max_body: int = 64 * 1024) -> RouteRules:
    """Compile a route's `shadow.compare` and `shadow.redact` configuration."""
    c = compare_config or CompareConfig()
    r = redact_config or RedactConfig()
    return RouteRules(
        compare=CompareRules(
            headers=c.headers,
            ignore=c.ignore,
            normalize=tuple(Normalizer(n.regex, n.replace, n.path) for n in c.normalize),
            tolerances=dict(c.tolerance),
            unordered=c.unordered,
            array_keys=dict(c.array_keys),
        ),
        thresholds=NoiseThresholds(relative=c.relative_threshold, absolute=c.absolute_threshold),
        redactor=Redactor.build(r.headers, r.body_fields, max_body),
    )


def compare_pair(primary: Reply, candidate: Reply, second: Reply | None, rules: RouteRules) -> tuple[Comparison, Comparison | None]:
    """Primary vs candidate, and primary vs its second answer (the noise probe) when there is one."""
    if second is None:
        return compare(primary, candidate, rules.compare), None
    result, noise = compare_all(primary, (candidate, second), rules.compare)
    return result, noise


def _text(redactor: Redactor, reply: Reply) -> str:
    body, cut = redactor.body(reply.body, reply.headers.get("content-type", ""))
    body = body[:SAMPLE_BODY_CAP]
    return body.decode("utf-8", "replace") + (" …(truncated)" if cut or reply.truncated or len(reply.body) > SAMPLE_BODY_CAP else "")


def judge(
    *,
    route: str,
    endpoint: str,
    request_line: str,
    primary: Reply,
    candidate: Reply,
    second: Reply | None,
    rules: RouteRules,
    model: NoiseModel,
    primary_ms: float | None,
    candidate_ms: float | None,
    wants_sample: Callable[[str, str], bool] = lambda endpoint, field: True,
    source: str = "live",
    ts: float | None = None,
    compared: tuple[Comparison, Comparison | None] | None = None,
) -> ComparisonRecord:
    """Compare one shadowed exchange; `request_line` must already be redacted.

    `compared` passes in `compare_pair`'s result when it was computed elsewhere (a thread).
    """
    result, noise = compared if compared is not None else compare_pair(primary, candidate, second, rules)
    candidate_fields = result.fields()
    noise_fields = noise.fields() if noise is not None else frozenset()
    model.observe(endpoint, candidate_fields, noise_fields if noise is not None else None)
    verdict = model.verdict(endpoint, candidate_fields, noise_fields)
    redacted = rules.redactor.differences(result.differences)
    diffs = [DiffRecord(d.path, d.field, d.kind.value) for d in redacted]
    if noise is not None:
        diffs += [DiffRecord(d.path, d.field, d.kind.value, "noise") for d in rules.redactor.differences(noise.differences)]
    samples = []
    seen: set[str] = set()
    bodies: tuple[str, str] | None = None
    for d in redacted:
        if d.field in seen or not wants_sample(endpoint, d.field):
            continue
        seen.add(d.field)
        if bodies is None:
            bodies = (_text(rules.redactor, primary), _text(rules.redactor, candidate))
        samples.append(SampleRecord(d.field, d.kind.value, d.path, request_line, d.primary, d.candidate, bodies[0], bodies[1]))
    return ComparisonRecord(
        ts=time.time() if ts is None else ts,
        route=route,
        endpoint=endpoint,
        primary_status=primary.status,
        candidate_status=candidate.status,
        primary_ms=primary_ms,
        candidate_ms=candidate_ms,
        match=result.matches,
        match_denoised=verdict.matches,
        noise_probe=noise is not None,
        source=source,
        differences=tuple(diffs),
        samples=tuple(samples),
    )


def failure_record(
    *, route: str, endpoint: str, primary_status: int, primary_ms: float | None, outcome: str, error: str, source: str = "live", ts: float | None = None
) -> ComparisonRecord:
    """A shadow that produced no candidate answer (`outcome` is `timeout` or `failed`). The error is
    stored without the query of any URL it quotes: a query can carry a token."""
    return ComparisonRecord(
        ts=time.time() if ts is None else ts,
        route=route,
        endpoint=endpoint,
        primary_status=primary_status,
        candidate_status=None,
        primary_ms=primary_ms,
        candidate_ms=None,
        match=False,
        match_denoised=False,
        outcome=outcome,
        source=source,
        error=scrub_urls(error)[:500],
    )
