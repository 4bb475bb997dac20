"""The report gate: whether a candidate's shadow report passes `--fail-over` (for CI and cutover)."""

from __future__ import annotations

from facade.shadow.exceptions import ReportError, ShadowFailed
from facade.shadow.report import Report

__all__ = ["check", "gate", "parse_rate"]


def parse_rate(text: str) -> float:
    """`5%` or `0.05` → 0.05."""
    try:
        value = float(text[:-1]) / 100 if text.strip().endswith("%") else float(text)
    except ValueError:
        raise ReportError(f"--fail-over {text!r} is not a rate; write e.g. 0.05 or 5%") from None
    if not 0 <= value <= 1:
        raise ReportError(f"--fail-over {text!r} is outside 0..1; write e.g. 0.05 or 5%")
    return value


def gate(report: Report, limit: float) -> list[str]:
    """Why `report` fails a pipeline gate at `limit`, or nothing when it passes.

    A candidate passes only when it was compared at all, when its mismatch rate (noise removed) is
    within `limit`, and when it answered: a candidate that is down or times out compares nothing,
    and a mismatch rate over what little it answered would prove nothing about the rest.
    """
    reasons = []
    if not report.compared:
        reasons.append(
            f"no requests were compared ({report.errors} candidate errors); check that shadowing is on "
            "for the route and that the candidate answers, or widen --since"
        )
    elif report.mismatch_rate > limit:
        reasons.append(f"mismatch rate {100 * report.mismatch_rate:.2f}% is above --fail-over {100 * limit:.2f}%")
    if report.errors and report.error_rate > limit:
        reasons.append(
            f"the candidate did not answer {100 * report.error_rate:.2f}% of shadowed requests "
            f"({report.errors} timed out or failed), above --fail-over {100 * limit:.2f}%"
        )
    return reasons


def check(report: Report, limit: float | None) -> None:
    """Raise `ShadowFailed` with every reason when `report` fails the gate at `limit` (None: no gate)."""
    reasons = gate(report, limit) if limit is not None else []
    if reasons:
        raise ShadowFailed("; ".join(reasons))
