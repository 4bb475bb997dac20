"""Shadow comparison reports: built from the shadow store, rendered as Markdown, JSON or HTML.

`build_report` is pure over `StoreData`: per route and endpoint it counts comparisons, match rates
with and without noise removal (noise recomputed from all stored counts, see `facade.shadow.noise`), the
status matrix, the top differing fields with kind, counts and a sample, latency percentiles of
both sides, candidate errors and dropped shadows. The HTML rendering is one self-contained file:
inline CSS and SVG charts drawn here, no scripts and no network fetches.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from facade.exceptions import FacadeError
from facade.shadow.noise import EndpointNoise, FieldCounts, NoiseModel, NoiseThresholds
from facade.shadow.store import StoreData

__all__ = [
    "EndpointReport",
    "FieldReport",
    "Report",
    "ReportError",
    "RouteReport",
    "build_report",
    "parse_rate",
    "parse_since",
    "render",
    "render_html",
    "render_json",
    "render_markdown",
]

TOP_FIELDS = 10
TEMPLATES = Path(__file__).with_name("templates")


class ReportError(FacadeError):
    """A report option cannot be understood."""


@dataclass
class Latency:
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None


@dataclass
class FieldReport:
    field: str
    kinds: dict[str, int]
    candidate: int
    noise: int
    real: bool
    rate: float  # share of compared requests whose candidate differed in this field
    sample: dict[str, Any] | None = None


@dataclass
class EndpointReport:
    endpoint: str
    compared: int
    matched: int
    matched_denoised: int
    noise_probes: int
    errors: dict[str, int]
    status_matrix: dict[str, int]
    fields: list[FieldReport]
    primary_latency: Latency
    candidate_latency: Latency

    @property
    def match_rate(self) -> float | None:
        return self.matched / self.compared if self.compared else None

    @property
    def match_rate_denoised(self) -> float | None:
        return self.matched_denoised / self.compared if self.compared else None


@dataclass
class RouteReport:
    route: str
    compared: int
    matched: int
    matched_denoised: int
    errors: dict[str, int]
    dropped: dict[str, int]
    endpoints: list[EndpointReport]
    timeline: list[tuple[float, int, int]]  # (bucket start, compared, mismatched after noise removal)
    primary_latency: Latency = field(default_factory=Latency)
    candidate_latency: Latency = field(default_factory=Latency)

    @property
    def mismatch_rate(self) -> float | None:
        return 1 - self.matched_denoised / self.compared if self.compared else None


@dataclass
class Report:
    generated: float
    since: float | None
    route_filter: str | None
    compared: int
    matched: int
    matched_denoised: int
    routes: list[RouteReport]

    @property
    def mismatch_rate(self) -> float:
        """Share of compared requests that differ once noise is removed (0 when none compared)."""
        return 1 - self.matched_denoised / self.compared if self.compared else 0.0

    @property
    def mismatch_rate_raw(self) -> float:
        return 1 - self.matched / self.compared if self.compared else 0.0

    @property
    def errors(self) -> int:
        """Shadowed requests the candidate never answered in time (timed out or failed)."""
        return sum(sum(r.errors.values()) for r in self.routes)

    @property
    def error_rate(self) -> float:
        """Share of shadowed requests the candidate did not answer (0 when none were sent)."""
        attempted = self.compared + self.errors
        return self.errors / attempted if attempted else 0.0


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


def parse_since(text: str | None, *, now: float) -> float | None:
    """`1h`, `30m`, `2d`, `1w`, or an ISO 8601 time → epoch seconds; None for no bound."""
    if not text:
        return None
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*", text)
    if found:
        return now - float(found.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[found.group(2)]
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ReportError(f"--since {text!r} is neither a duration nor a time; write e.g. 1h, 30m, 2d or 2024-05-01T12:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def parse_rate(text: str) -> float:
    """`5%` or `0.05` → 0.05."""
    try:
        value = float(text[:-1]) / 100 if text.strip().endswith("%") else float(text)
    except ValueError:
        raise ReportError(f"--fail-over {text!r} is not a rate; write e.g. 0.05 or 5%") from None
    if not 0 <= value <= 1:
        raise ReportError(f"--fail-over {text!r} is outside 0..1; write e.g. 0.05 or 5%")
    return value


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, math.ceil(q / 100 * len(ordered)) - 1)
    return round(ordered[rank], 3)


def _latency(values: Sequence[float]) -> Latency:
    return Latency(_percentile(values, 50), _percentile(values, 95), _percentile(values, 99))


def build_report(
    data: StoreData,
    *,
    now: float,
    since: float | None = None,
    route_filter: str | None = None,
    thresholds: Mapping[str, NoiseThresholds] | None = None,
    buckets: int = 24,
) -> Report:
    """Aggregate stored comparisons into a report (pure)."""
    thresholds = thresholds or {}
    diffs_by_comparison: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for d in data.differences:
        diffs_by_comparison[d["comparison_id"]].append(d)

    by_route: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in data.comparisons:
        by_route[c["route"]].append(c)
    dropped: dict[str, Counter[str]] = defaultdict(Counter)
    for d in data.drops:
        dropped[d["route"]][d["reason"]] += d["count"]
    samples: dict[tuple[str, str], dict[str, Any]] = {}
    for s in data.samples:
        samples.setdefault((s["endpoint"], s["field"]), s)

    times = [c["ts"] for c in data.comparisons]
    start, end = (min(times), max(times)) if times else (now, now)
    width = max((end - start) / buckets, 1.0)

    routes = []
    for route in sorted(set(by_route) | set(dropped)):
        rows = by_route.get(route, [])
        model = NoiseModel(thresholds.get(route))
        compared_rows = [c for c in rows if c["outcome"] == "compared"]
        candidate_fields: dict[int, set[str]] = {}
        noise_fields: dict[int, set[str]] = {}
        kinds: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        for c in compared_rows:
            cand = set()
            noise = set()
            for d in diffs_by_comparison.get(c["id"], ()):
                if d["origin"] == "noise":
                    noise.add(d["field"])
                else:
                    cand.add(d["field"])
                    kinds[(c["endpoint"], d["field"])][d["kind"]] += 1
            candidate_fields[c["id"]] = cand
            noise_fields[c["id"]] = noise
            model.observe(c["endpoint"], cand, noise if c["noise_probe"] else None)

        endpoints = []
        timeline_total: Counter[int] = Counter()
        timeline_bad: Counter[int] = Counter()
        route_matched = route_denoised = 0
        for endpoint in sorted({c["endpoint"] for c in rows}):
            ep_rows = [c for c in rows if c["endpoint"] == endpoint]
            ep_compared = [c for c in ep_rows if c["outcome"] == "compared"]
            matched = denoised = 0
            for c in ep_compared:
                verdict = model.verdict(endpoint, candidate_fields[c["id"]], noise_fields[c["id"]])
                matched += not candidate_fields[c["id"]]
                denoised += verdict.matches
                bucket = int((c["ts"] - start) // width)
                timeline_total[bucket] += 1
                timeline_bad[bucket] += not verdict.matches
            route_matched += matched
            route_denoised += denoised
            stats = model.endpoints.get(endpoint, EndpointNoise())
            field_reports = []
            for name, counts in stats.fields.items():
                if counts.candidate == 0:
                    continue
                sample = samples.get((endpoint, name))
                field_reports.append(
                    FieldReport(
                        field=name,
                        kinds=dict(kinds[(endpoint, name)]),
                        candidate=counts.candidate,
                        noise=counts.noise,
                        real=model.is_real(endpoint, name),
                        rate=counts.candidate / max(stats.compared, 1),
                        sample=_sample(sample),
                    )
                )
            field_reports.sort(key=lambda f: (not f.real, -f.candidate, f.field))
            status = Counter(f"{c['primary_status']}→{c['candidate_status'] if c['candidate_status'] is not None else '—'}" for c in ep_rows)
            endpoints.append(
                EndpointReport(
                    endpoint=endpoint,
                    compared=len(ep_compared),
                    matched=matched,
                    matched_denoised=denoised,
                    noise_probes=stats.probes,
                    errors=dict(Counter(c["outcome"] for c in ep_rows if c["outcome"] != "compared")),
                    status_matrix=dict(sorted(status.items())),
                    fields=field_reports[:TOP_FIELDS],
                    primary_latency=_latency([c["primary_ms"] for c in ep_rows if c["primary_ms"] is not None]),
                    candidate_latency=_latency([c["candidate_ms"] for c in ep_compared if c["candidate_ms"] is not None]),
                )
            )
        timeline = [(start + b * width, timeline_total[b], timeline_bad[b]) for b in sorted(timeline_total)]
        routes.append(
            RouteReport(
                route=route,
                compared=len(compared_rows),
                matched=route_matched,
                matched_denoised=route_denoised,
                errors=dict(Counter(c["outcome"] for c in rows if c["outcome"] != "compared")),
                dropped=dict(dropped.get(route, {})),
                endpoints=endpoints,
                timeline=timeline,
                primary_latency=_latency([c["primary_ms"] for c in rows if c["primary_ms"] is not None]),
                candidate_latency=_latency([c["candidate_ms"] for c in compared_rows if c["candidate_ms"] is not None]),
            )
        )
    return Report(
        generated=now,
        since=since,
        route_filter=route_filter,
        compared=sum(r.compared for r in routes),
        matched=sum(r.matched for r in routes),
        matched_denoised=sum(r.matched_denoised for r in routes),
        routes=routes,
    )


def _sample(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {k: row[k] for k in ("path", "kind", "request", "primary_value", "candidate_value")}


# --- rendering ---------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _when(ts: float | None) -> str:
    return "—" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def report_dict(report: Report) -> dict[str, Any]:
    """The report as plain JSON-able data, with the derived rates included."""
    out = asdict(report)
    out["mismatch_rate"] = report.mismatch_rate
    out["mismatch_rate_raw"] = report.mismatch_rate_raw
    out["errors"] = report.errors
    out["error_rate"] = report.error_rate
    for r_out, r in zip(out["routes"], report.routes):
        r_out["mismatch_rate"] = r.mismatch_rate
        r_out["timeline"] = [{"start": t, "compared": n, "mismatched": bad} for t, n, bad in r.timeline]
        for e_out, e in zip(r_out["endpoints"], r.endpoints):
            e_out["match_rate"] = e.match_rate
            e_out["match_rate_denoised"] = e.match_rate_denoised
    return out


def render_json(report: Report) -> str:
    return json.dumps(report_dict(report), indent=2, ensure_ascii=False)


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report) -> str:
    lines = [
        "# Shadow comparison report",
        "",
        f"Generated {_when(report.generated)}; since {_when(report.since) if report.since else 'the beginning'}"
        + (f"; route {report.route_filter}" if report.route_filter else "")
        + ".",
        "",
        f"**{report.compared}** requests compared; match rate **{_pct(1 - report.mismatch_rate if report.compared else None)}** "
        f"with noise removed, {_pct(1 - report.mismatch_rate_raw if report.compared else None)} raw; "
        f"{report.errors} unanswered by the candidate ({_pct(report.error_rate if report.errors else 0.0)}).",
        "",
    ]
    for r in report.routes:
        lines += [f"## Route `{r.route}`", ""]
        lines.append(
            f"Compared {r.compared}; match rate {_pct(r.matched_denoised / r.compared if r.compared else None)} with noise removed, "
            f"{_pct(r.matched / r.compared if r.compared else None)} raw. "
            f"Candidate errors: {_counts(r.errors)}. Dropped shadows: {_counts(r.dropped)}."
        )
        lines += ["", "| endpoint | compared | match (noise removed) | match (raw) | errors | p50/p95/p99 primary ms | p50/p95/p99 candidate ms |", "|---|---:|---:|---:|---|---|---|"]
        for e in r.endpoints:
            lines.append(
                f"| `{_md(e.endpoint)}` | {e.compared} | {_pct(e.match_rate_denoised)} | {_pct(e.match_rate)} | {_counts(e.errors)} | "
                f"{_ms(e.primary_latency.p50)} / {_ms(e.primary_latency.p95)} / {_ms(e.primary_latency.p99)} | "
                f"{_ms(e.candidate_latency.p50)} / {_ms(e.candidate_latency.p95)} / {_ms(e.candidate_latency.p99)} |"
            )
        for e in r.endpoints:
            lines += ["", f"### `{_md(e.endpoint)}`", "", "Status (primary→candidate): " + ", ".join(f"{k}: {v}" for k, v in e.status_matrix.items()), ""]
            if not e.fields:
                lines.append("No differing fields.")
                continue
            lines += ["| field | verdict | kinds | candidate diffs | noise diffs | sample primary | sample candidate |", "|---|---|---|---:|---:|---|---|"]
            for f in e.fields:
                s = f.sample or {}
                lines.append(
                    f"| `{_md(f.field)}` | {'real' if f.real else 'noise'} | {_counts(f.kinds)} | {f.candidate} | {f.noise} | "
                    f"`{_md(s.get('primary_value'))}` | `{_md(s.get('candidate_value'))}` |"
                )
        lines.append("")
    return "\n".join(lines) + "\n"


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2")


def mismatch_chart(report: Report, *, width: int = 880, height: int = 260) -> str:
    """Inline SVG: mismatch rate (noise removed) over time, one line per route."""
    left, right, top, bottom = 56, 16, 16, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    points = [t for r in report.routes for t, _, _ in r.timeline]
    t0, t1 = (min(points), max(points)) if points else (report.generated, report.generated)
    span = max(t1 - t0, 1.0)
    out = [f'<svg class="chart" role="img" aria-label="Mismatch rate over time" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">']
    for pct in (0, 25, 50, 75, 100):
        y = top + plot_h * (1 - pct / 100)
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#6b7280">{pct}%</text>')
    for when, anchor in ((t0, "start"), (t1, "end")):
        x = left + plot_w * (when - t0) / span
        out.append(f'<text x="{x:.1f}" y="{height - 20}" text-anchor="{anchor}" font-size="11" fill="#6b7280">{html.escape(_when(when))}</text>')
    for i, r in enumerate(report.routes):
        colour = PALETTE[i % len(PALETTE)]
        coords = [(left + plot_w * (t - t0) / span, top + plot_h * (1 - (bad / n if n else 0))) for t, n, bad in r.timeline]
        if len(coords) == 1:
            x, y = coords[0]
            out.append(f'<circle class="series" cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{colour}"/>')
        elif coords:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            out.append(f'<polyline class="series" points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
            for x, y in coords:
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}"/>')
        lx = left + 8 + 170 * i
        out.append(f'<rect x="{lx}" y="{height - 12}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{lx + 14}" y="{height - 3}" font-size="11">{html.escape(r.route)}</text>')
    out.append("</svg>")
    return "".join(out)


def latency_chart(report: Report, *, width: int = 880) -> str:
    """Inline SVG: p50/p95/p99 latency, primary vs candidate, per endpoint (horizontal bars)."""
    rows = [(f"{r.route} · {e.endpoint}", e) for r in report.routes for e in r.endpoints]
    label_w, right, bar_h, gap = 300, 60, 9, 14
    group_h = 6 * bar_h + gap
    height = max(60, 30 + group_h * len(rows))
    values = [v for _, e in rows for lat in (e.primary_latency, e.candidate_latency) for v in (lat.p50, lat.p95, lat.p99) if v is not None]
    top_value = max(values) if values else 1.0
    scale = (width - label_w - right) / (top_value or 1.0)
    out = [f'<svg class="chart" role="img" aria-label="Latency primary vs candidate" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">']
    out.append('<rect x="10" y="4" width="10" height="10" fill="#2563eb"/><text x="24" y="13" font-size="11">primary</text>')
    out.append('<rect x="90" y="4" width="10" height="10" fill="#f59e0b"/><text x="104" y="13" font-size="11">candidate</text>')
    y = 24
    for label, e in rows:
        out.append(f'<text x="{label_w - 8}" y="{y + 3 * bar_h + 4}" text-anchor="end" font-size="11">{html.escape(label[:48])}</text>')
        for q in ("p50", "p95", "p99"):
            for lat, colour in ((e.primary_latency, "#2563eb"), (e.candidate_latency, "#f59e0b")):
                v = getattr(lat, q)
                w = (v or 0.0) * scale
                out.append(f'<rect class="bar" x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h - 1}" fill="{colour}"><title>{q} {_ms(v)} ms</title></rect>')
                out.append(f'<text x="{label_w + w + 4:.1f}" y="{y + bar_h - 1}" font-size="9" fill="#374151">{q} {_ms(v)}</text>')
                y += bar_h
        y += gap
    out.append("</svg>")
    return "".join(out)


def render_html(report: Report) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )
    env.filters["pct"] = _pct
    env.filters["ms"] = _ms
    env.filters["when"] = _when
    env.filters["counts"] = _counts
    template = env.get_template("shadow_report.html.j2")
    return template.render(
        report=report,
        mismatch_chart=Markup(mismatch_chart(report)),
        latency_chart=Markup(latency_chart(report)),
    )


def render(report: Report, fmt: str) -> str:
    renderers = {"md": render_markdown, "json": render_json, "html": render_html}
    if fmt not in renderers:
        raise ReportError(f"--format {fmt!r} is not known; use one of: html, md, json")
    return renderers[fmt](report)


def noise_counts(stats: Mapping[str, Mapping[str, tuple[int, int]]]) -> dict[str, EndpointNoise]:
    """Helper for tests and callers holding plain counts: endpoint → field → (candidate, noise)."""
    return {ep: EndpointNoise(fields={f: FieldCounts(c, n) for f, (c, n) in fields.items()}) for ep, fields in stats.items()}
