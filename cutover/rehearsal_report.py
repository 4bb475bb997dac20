"""The rehearsal's report: one JSON document, rendered as Markdown or one self-contained HTML file.

`document` assembles it from what `cutover.rehearsal.rehearse` gathered: the plan, the options,
the scaling (every value of the plan the rehearsal changed, before and after), the scratch setup
(rows copied per table, the phases' timings, the processes), each step with its gate verdicts
and decision (`steps_from_events`, a pure fold of the runner's events), the write switch (or why
it was not rehearsed) with the pause estimate against the pause measured, verify, dead letters
and conflicts, the replay's counts and the cleanup. The HTML has inline CSS and one inline SVG
chart (the target's weight over the run): no scripts, no network fetches, like the shadow report.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from cutover.exceptions import CutoverError
from cutover.plan import Plan

__all__ = ["FORMATS", "document", "render", "render_html", "render_json", "render_markdown", "steps_from_events", "weight_chart"]

FORMATS = ("html", "md", "json")
TEMPLATES = Path(__file__).with_name("templates")


def _text(event: Mapping[str, Any]) -> str:
    detail = event.get("detail") or {}
    if event.get("event") == "verify":
        return f"verify {'clean' if detail.get('identical') else 'found differences'}: {detail.get('summary', '')}"
    return str(detail.get("description") or detail.get("reason") or "")


def steps_from_events(plan: Plan, events: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each step of the plan as the run went through it, and the run's timeline (seconds from its start)."""
    steps: list[dict[str, Any]] = [
        {"index": index, "label": step.label(), "kind": step.kind, "reached": False, "served_at": None, "readings": 0,
         "decision": None, "reason": "", "verdicts": [], "elapsed": None, "requests": None, "approved_by": None,
         "rolled_back_to": None}
        for index, step in enumerate(plan.steps)
    ]
    timeline: list[dict[str, Any]] = []
    start = float(events[0]["at"]) if events else 0.0
    current: dict[str, Any] | None = None
    for event in events:
        kind, detail, index = event["event"], event.get("detail") or {}, event.get("step")
        step = steps[index] if isinstance(index, int) and 0 <= index < len(steps) else None
        at = round(float(event["at"]) - start, 3)
        if kind in ("applied", "awaiting_approval") and step is not None and detail.get("why", "advance") == "advance":
            step.update(reached=True, served_at=at)
            current = step
        elif kind == "applied" and detail.get("why") in ("fail", "abort", "rollback") and current is not None:
            current["rolled_back_to"] = step["label"] if step is not None else "0"
            current = step
        elif kind in ("soak", "decision") and step is not None:
            step.update(readings=step["readings"] + 1, decision=detail.get("decision"), reason=detail.get("reason", ""),
                        verdicts=list(detail.get("verdicts") or []), elapsed=detail.get("elapsed"), requests=detail.get("requests"))
        elif kind == "approved" and step is not None:
            step.update(decision="approved", reason="approved by the rehearsal", approved_by="strangler rehearse")
        elif kind == "paused" and (step or current) is not None:
            target = step or current
            assert target is not None
            target.update(decision="paused", reason=detail.get("reason", ""))
        if kind in ("soak", "run.start"):
            continue
        label = step["label"] if step is not None else None
        timeline.append({"t": at, "event": kind, "step": label, "weight": event.get("weight"), "text": _text(event),
                         "decision": detail.get("decision") if kind == "decision" else kind})
    return steps, timeline


def _pause(writes: Mapping[str, Any]) -> dict[str, Any] | None:
    """The write switch's pause: the estimate made before the hold against the pause measured."""
    if not writes.get("rehearsed"):
        return None
    estimate = (writes.get("estimate") or {}).get("pause_s")
    measured = writes.get("pause_s")
    ratio = measured / estimate if isinstance(estimate, int | float) and isinstance(measured, int | float) and estimate else None
    return {"estimate_s": estimate, "measured_s": measured, "ratio": ratio}


def document(plan: Plan, options: Any, state: Mapping[str, Any]) -> dict[str, Any]:
    """The report as plain JSON-able data (the JSON format is exactly this)."""
    scaling, found = state["scaling"], state["survey"]
    steps, timeline = steps_from_events(plan, state.get("events") or [])
    writes = state.get("writes") or {"rehearsed": False, "reason": "the rehearsal stopped before the write switch"}
    run = state.get("run") or {"status": "not run", "reason": "the scratch stack did not come up", "actions": []}
    return {
        "version": 1,
        "kind": "strangler-rehearsal",
        "plan": {
            "name": plan.name, "file": str(getattr(options, "plan_file", "") or ""), "routes": list(plan.routes),
            "target": plan.target, "old": state.get("old"), "steps": [step.label() for step in plan.steps],
            "gates": plan.gates.names(), "writes": plan.writes is not None,
        },
        "options": {
            "traffic": str(options.traffic), "speed": options.speed, "sample": state.get("sample"), "all": options.all_rows,
            "max_rate": state.get("max_rate"), "source": state.get("source_url"),
        },
        "started_at": state.get("started"), "finished_at": state.get("finished"),
        "duration_s": round(float(state.get("finished", 0.0)) - float(state.get("started", 0.0)), 3),
        "scaling": {**scaling.as_dict(), "changes": list(state.get("changes") or [])},
        "setup": {"copy": state.get("copy"), "timings": dict(state.get("timings") or {}), "processes": list(state.get("processes") or [])},
        "run": run,
        "steps": steps,
        "timeline": timeline,
        "writes": writes,
        "pause": _pause(writes),
        "data": dict(state.get("data") or {}),
        "replay": {**found.as_dict(), **dict(state.get("replay") or {})},
        "cleanup": dict(state.get("cleanup") or {}),
    }


# --------------------------------------------------------------------------------------------
# Rendering


def _when(ts: float | None) -> str:
    return "—" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _secs(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def _counts(counts: Mapping[str, int] | None) -> str:
    return ", ".join(f"{key} {value}" for key, value in (counts or {}).items()) or "none"


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_json(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False, default=str)


def _verdicts_md(verdicts: Sequence[Mapping[str, Any]]) -> str:
    return "; ".join(f"{v['gate']} **{v['result']}** ({v['reason']})" for v in verdicts) or "—"


def render_markdown(doc: Mapping[str, Any]) -> str:
    plan, run, replay, copy = doc["plan"], doc["run"], doc["replay"], doc["setup"]["copy"] or {}
    lines = [
        f"# Rehearsal of plan `{plan['name']}`",
        "",
        f"{_when(doc['started_at'])}, {doc['duration_s']:.1f} s in all. {', '.join(plan['routes'])}: {plan['old']} → "
        f"{plan['target']}, steps {' → '.join(plan['steps'])}, at {doc['options']['speed']:g}× speed.",
        "",
        f"**Outcome: {run['status']}**" + (f" — {_md(run['reason'])}" if run.get("reason") else ""),
        "",
        "## Steps",
        "",
        "| # | step | reached | served at | readings | decision | gates |",
        "|---:|---|---|---:|---:|---|---|",
    ]
    for step in doc["steps"]:
        decision = step["decision"] or "—"
        if step["rolled_back_to"] is not None:
            decision += f" (rolled back to {step['rolled_back_to']})"
        lines.append(
            f"| {step['index']} | {step['label']} | {'yes' if step['reached'] else 'no'} | {_secs(step['served_at'])} | "
            f"{step['readings']} | {_md(decision)} | {_md(_verdicts_md(step['verdicts']))} |"
        )
    writes, pause = doc["writes"], doc["pause"]
    lines += ["", "## Write switch", ""]
    if writes.get("rehearsed"):
        lines.append(f"Pause estimated {_secs(pause['estimate_s'])}, measured {_secs(pause['measured_s'])}.")
    else:
        lines.append(f"writes: not rehearsed ({writes.get('reason')})")
    lines += ["", "## Data", ""]
    for name, entry in doc["data"].items():
        verify = entry.get("verify") or {}
        tables = "; ".join(f"{t['target']} {t['matching']} matching, {t['mismatched']} mismatched, {t['only_in_source']}/"
                           f"{t['only_in_target']} only in source/target" for t in verify.get("tables", []))
        lines.append(f"- `{name}` ({entry.get('spec')}): verify {'identical' if verify.get('identical') else 'NOT identical'}"
                     f" ({tables}); {entry.get('dead_letters', '?')} dead letters; {entry.get('conflicts', '?')} conflicts"
                     + (f"; error: {entry['error']}" if entry.get("error") else ""))
    lines += [
        "", "## Replay", "",
        f"{replay['records']} records, {replay['replayable']} replayable (GET/HEAD), {replay['on_routes']} on the plan's routes; "
        f"sent {replay.get('sent', 0)} in {replay.get('loops', 0)} pass(es) at {replay.get('rate', 0)}/s; answers "
        f"{_counts(replay.get('statuses'))}; {replay.get('failed', 0)} unanswered.",
        f"Not replayed (no recorded bodies): {_counts(replay['not_replayed'])}.",
        "", "## Scaling", "",
        f"factor {doc['scaling']['factor']:g} (replay {doc['scaling']['route_replay_rate']:g}/s on the routes against "
        f"{doc['scaling']['route_recorded_rate']:g}/s recorded × {doc['scaling']['speed']:g}).",
        "", "| key | plan | rehearsal |", "|---|---:|---:|",
    ]
    lines += [f"| `{c['key']}` | {c['plan']:g} | {c['rehearsal']:g} |" for c in doc["scaling"]["changes"]]
    rows = "all" if copy.get("sample") is None else f"sample {copy.get('sample')}"
    lines += ["", "## Scratch setup", "", f"Rows copied ({rows}):", "",
              "| table | rows copied | source rows (est.) |", "|---|---:|---:|"]
    lines += [f"| `{t['table']}` | {t['rows']} | {t['source_rows'] if t['source_rows'] is not None else '—'} |"
              for t in copy.get("tables", [])]
    lines += ["", "Timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in doc["setup"]["timings"].items()), "",
              "## Cleanup", ""]
    cleanup = doc["cleanup"]
    lines.append(f"{len(cleanup.get('processes', []))} processes stopped "
                 f"({', '.join(p['name'] for p in cleanup.get('processes', []))}); cluster removed: "
                 f"{cleanup.get('cluster_removed')}; temporary directory removed: {cleanup.get('temp_dir_removed')}.")
    return "\n".join(lines) + "\n"


PALETTE = {"advance": "#16a34a", "fail": "#dc2626", "pause": "#f59e0b", "paused": "#f59e0b", "approved": "#2563eb"}


def weight_chart(doc: Mapping[str, Any], *, width: int = 880, height: int = 240) -> str:
    """Inline SVG: the target's weight over the run (a step line), a dot per decision."""
    left, right, top, bottom = 48, 16, 16, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    timeline = doc["timeline"]
    end = max([entry["t"] for entry in timeline] + [1.0])
    points: list[tuple[float, float]] = [(0.0, 0.0)]
    for entry in timeline:
        if entry["event"] == "applied" and entry["weight"] is not None:
            points += [(entry["t"], points[-1][1]), (entry["t"], float(entry["weight"]))]
    points.append((end, points[-1][1]))

    def xy(t: float, weight: float) -> tuple[float, float]:
        return left + plot_w * t / end, top + plot_h * (1 - weight / 100)

    out = [f'<svg class="chart" role="img" aria-label="Weight to the target over the rehearsal" xmlns="http://www.w3.org/2000/svg" '
           f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">']
    for pct in (0, 25, 50, 75, 100):
        _, y = xy(0, pct)
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#6b7280">{pct}%</text>')
    out.append(f'<text x="{left}" y="{height - 14}" font-size="11" fill="#6b7280">0 s</text>')
    out.append(f'<text x="{left + plot_w}" y="{height - 14}" text-anchor="end" font-size="11" fill="#6b7280">{end:.1f} s</text>')
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(t, w) for t, w in points))
    out.append(f'<polyline class="series" points="{path}" fill="none" stroke="#2563eb" stroke-width="2"/>')
    weight = 0.0
    for entry in timeline:
        if entry["event"] == "applied" and entry["weight"] is not None:
            weight = float(entry["weight"])
        if entry["event"] in ("decision", "approved", "paused"):
            colour = PALETTE.get(str(entry["decision"]), "#6b7280")
            x, y = xy(entry["t"], weight)
            title = html.escape(f"{entry['step']}: {entry['event']} {entry['text']}"[:300])
            out.append(f'<circle class="decision" cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{colour}"><title>{title}</title></circle>')
    out.append("</svg>")
    return "".join(out)


def render_html(doc: Mapping[str, Any]) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )
    env.filters["when"] = _when
    env.filters["secs"] = _secs
    env.filters["counts"] = _counts
    return env.get_template("rehearsal_report.html.j2").render(doc=doc, weight_chart=Markup(weight_chart(doc)))


def render(doc: Mapping[str, Any], fmt: str) -> str:
    renderers = {"md": render_markdown, "json": render_json, "html": render_html}
    if fmt not in renderers:
        raise CutoverError(f"--format {fmt!r} is not known; use one of: {', '.join(FORMATS)}")
    return renderers[fmt](doc)
