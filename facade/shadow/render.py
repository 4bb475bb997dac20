"""Rendering a shadow comparison report as Markdown, JSON or one self-contained HTML file.

The HTML file has inline CSS and SVG charts drawn here: no scripts and no network fetches.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from facade.shadow.exceptions import ReportError
from facade.shadow.report import Report, make_report
from facade.shadow.store import ShadowStore

__all__ = ["render", "render_html", "render_json", "render_markdown", "report_dict", "write_report"]

TEMPLATES = Path(__file__).with_name("templates")


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


def write_report(store_url: str, output: Path, *, fmt: str = "html", since: str | None = None, route: str | None = None) -> Report:
    """Render the report of the store at `store_url` (opened read-only) into `output`; returns it."""
    store = ShadowStore(store_url, read_only=True)
    try:
        result = make_report(store, since=since, route=route)
    finally:
        store.close()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(result, fmt), encoding="utf-8")
    return result
