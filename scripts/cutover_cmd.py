"""`strangler cutover plan|run|writes|finish|status|approve|pause|resume|abort|rollback|schema`.

Thin over `cutover.control`: load the plan, call one function, print. Errors are the package's
`CutoverError` (printed by `scripts.cli` as `FAILED: ...`); an invalid plan prints every
`file:line:col: problem` and exits 1.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from cutover import control
from cutover.exceptions import PlanError
from cutover.plan import Plan, json_schema, load_plan
from facade.edit import write_atomically

app = typer.Typer(no_args_is_help=True, help="Move a route to the new service step by step, with gates, journaled and reversible.")

_EXIT = {"done": 0, "rolled_back": 1, "aborted": 1, "paused": 3, "awaiting_approval": 3, "soaking": 3}
_COLOURS = {"pass": "green", "fail": "red", "inconclusive": "yellow"}


def _load(path: Path) -> Plan:
    try:
        return load_plan(path)
    except PlanError as exc:
        for problem in exc.problems:
            typer.echo(problem, err=True)
        raise typer.Exit(1) from exc


def _verdicts_table(verdicts: list[dict[str, Any]], title: str = "gates") -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("gate", style="bold")
    table.add_column("verdict")
    table.add_column("reading")
    for verdict in verdicts:
        colour = _COLOURS.get(verdict["result"], "white")
        table.add_row(verdict["gate"], f"[{colour}]{verdict['result']}[/]", Text(verdict["reason"]))
    return table


@app.command("plan")
def plan_command(
    plan_file: Path = typer.Argument(..., metavar="PLAN", help="The plan file, e.g. extracted/catalog/cutover.yaml."),
    as_json: bool = typer.Option(False, "--json", help="Print the overview as JSON."),
) -> None:
    """Show the steps, each step's routing change, the gates and their current readings.

    Exits 1 when the plan is invalid or a gate's source (a replica, a database, the store) is unreachable."""
    plan = _load(plan_file)
    result = control.overview(plan)
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
    else:
        console = Console()
        console.print(f"plan [bold]{plan.name}[/]: {', '.join(plan.routes)} {result['old']} → {plan.target} "
                      f"(now {result['weight']:g}% to {plan.target}), routing file {plan.routing}")
        steps = Table(title="steps", title_justify="left")
        for column in ("#", "step", "routing change", "soak"):
            steps.add_column(column)
        for step in result["steps"]:
            soak = step["soak"]
            steps.add_row(str(step["index"]), step["step"], Text(step["change"]),
                          f"{soak['min_time']:g}s, {soak['min_requests']} requests")
        console.print(steps)
        if result["first_diff"]:
            console.print(Text(result["first_diff"]))
        console.print(_verdicts_table(result["verdicts"], "gates now"))
        console.print(f"on a failed gate: {plan.on_fail}; inconclusive: soak up to {plan.on_inconclusive.max_soak:g}s, then {plan.on_inconclusive.then}")
        for replica in result["replicas"]:
            console.print(f"replica {replica['url']}: version {replica['version']}")
    if result["unreachable"]:
        for name, reason in result["unreachable"].items():
            typer.echo(f"FAILED: {name}: {reason}", err=True)
        raise typer.Exit(1)


class _LiveView:
    """The run's live view: step, time in step, requests, each gate's reading and verdict."""

    def __init__(self, plan: Plan, console: Console) -> None:
        self.plan = plan
        self.console = console
        self.lines: list[str] = []
        self.reading: dict[str, Any] | None = None
        self.live: Live | None = None

    def render(self) -> Group:
        parts: list[Any] = [Text("\n".join(self.lines[-12:]))]
        if self.reading is not None:
            r = self.reading
            parts.append(Text(f"step {r['label']}: {r['elapsed']:.0f}s in step, {r['requests']} requests; {r['decision']}: {r['reason']}"))
            parts.append(_verdicts_table(r["verdicts"]))
        return Group(*parts)

    def event(self, event: dict[str, Any]) -> None:
        if self.plan.events.file == "-":
            sys.stdout.write(json.dumps(event, default=str, sort_keys=True) + "\n")
            sys.stdout.flush()
        kind = event["event"]
        if kind in ("soak", "run.start"):
            return
        detail = event.get("detail") or {}
        text = detail.get("description") or detail.get("reason") or ""
        stamp = time.strftime("%H:%M:%S", time.localtime(event["at"]))
        line = f"{stamp} {kind}" + (f" [{detail.get('label')}]" if detail.get("label") else "") + (f": {text}" if text else "")
        self.lines.append(line)
        if self.live is None:
            self.console.print(line, markup=False, highlight=False)
        else:
            self.live.update(self.render())

    def view(self, reading: dict[str, Any]) -> None:
        self.reading = reading
        if self.live is not None:
            self.live.update(self.render())


@app.command("run")
def run_command(
    plan_file: Path = typer.Argument(..., metavar="PLAN"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Read the live gates, print what a run would do, change nothing."),
    exit_when_paused: bool = typer.Option(False, "--exit-when-paused", help="Exit (code 3) when the run pauses instead of waiting."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON at the end."),
) -> None:
    """Run the steps: shift, wait for every replica, soak, read the gates, go on, roll back or pause."""
    plan = _load(plan_file)
    console = Console(stderr=True)
    view = _LiveView(plan, console)
    if dry_run:
        result = control.run(plan, dry_run=True)
        if as_json:
            typer.echo(json.dumps(result.as_dict(), indent=2))
        else:
            typer.echo(f"dry run of plan {plan.name}: nothing is changed")
            for number, action in enumerate(result.actions, 1):
                typer.echo(f"  {number}. {action}")
            typer.echo(f"then: {result.status}" + (f" ({result.reason})" if result.reason else ""))
        return
    interactive = console.is_terminal and not as_json
    if interactive:
        with Live(view.render(), console=console, refresh_per_second=4, transient=False) as live:
            view.live = live
            result = control.run(plan, exit_when_paused=exit_when_paused, on_event=view.event, on_view=view.view)
    else:
        result = control.run(plan, exit_when_paused=exit_when_paused, on_event=view.event, on_view=view.view)
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
    else:
        typer.echo(f"{plan.name}: {result.status}" + (f" ({result.reason})" if result.reason else ""))
    raise typer.Exit(_EXIT.get(result.status, 1))


@app.command("status")
def status_command(
    plan_file: Path = typer.Argument(..., metavar="PLAN"),
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
) -> None:
    """Where the run stands, read from the journal only."""
    plan = _load(plan_file)
    result = control.status(plan)
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
        return
    console = Console()
    console.print(f"plan [bold]{plan.name}[/]: {result['status']}" + (f" — {result['reason']}" if result["reason"] else ""))
    console.print(f"step {result['step'] or '(none)'} ({result['weight']:g}% to {plan.target}), last passed {result['passed'] or '(none)'}")
    if result["pending_intent"]:
        console.print(f"change in progress: {result['pending_intent']}")
    if result["open_requests"]:
        console.print(f"requests waiting for the runner: {', '.join(result['open_requests'])}")
    reading = result["last_reading"]
    if reading:
        console.print(f"last reading at step {reading['label']}: {reading['requests']} requests, {reading['decision']}")
        console.print(_verdicts_table(reading["verdicts"]))
    writes = result.get("writes")
    if writes:
        last = writes["last"] or {}
        console.print(f"writes: on {writes['writer']}" + (f"; last switch {last.get('direction', '')} {last.get('outcome')}"
                                                           f" ({last.get('reason', '')})" if last else ""))
        if writes["unfinished"]:
            console.print(f"[yellow]unfinished write switch[/] ({writes['unfinished']['direction']}): "
                          f"{', '.join(writes['unfinished']['steps'])}; `strangler cutover writes` finishes or undoes it")
        for side, item in (writes.get("conflicts") or {}).items():
            if isinstance(item, dict) and item.get("count"):
                console.print(f"[red]{item['count']} conflict(s)[/] in the {side} stream, latest: {'; '.join(item['recent'])}")
            elif side == "error":
                console.print(f"conflicts: cannot read them ({item})")
    table = Table(title="journal", title_justify="left")
    for column in ("#", "when", "what", "detail"):
        table.add_column(column)
    for item in result["history"][-15:]:
        table.add_row(str(item["id"]), time.strftime("%H:%M:%S", time.localtime(item["at"])), item["kind"], Text(str(item["text"])))
    console.print(table)


def _request(plan_file: Path, kind: str, to: str | None = None) -> None:
    plan = _load(plan_file)
    result = control.request(plan, kind, to=to)
    if not result["acted"]:
        typer.echo(f"{kind} journaled for plan {plan.name}; the runner acts on it at its next turn")
    elif "result" in result:
        outcome = result["result"]
        typer.echo(f"{kind} done: {outcome['status']}" + (f"; {'; '.join(outcome['actions'])}" if outcome["actions"] else ""))
    else:
        typer.echo(f"{kind} done by {result['by']}")


@app.command("approve")
def approve_command(plan_file: Path = typer.Argument(..., metavar="PLAN")) -> None:
    """Let a run waiting at an `approve` step go on."""
    _request(plan_file, "approve")


@app.command("pause")
def pause_command(plan_file: Path = typer.Argument(..., metavar="PLAN")) -> None:
    """Stop progress without rolling back (the postpone flag): the run holds its step until resume."""
    _request(plan_file, "pause")


@app.command("resume")
def resume_command(plan_file: Path = typer.Argument(..., metavar="PLAN")) -> None:
    """Carry on after a pause; a routing file edited by hand is adopted as it is (journaled)."""
    _request(plan_file, "resume")


@app.command("abort")
def abort_command(plan_file: Path = typer.Argument(..., metavar="PLAN")) -> None:
    """Roll the route back to 0% to the target now."""
    _request(plan_file, "abort")


@app.command("rollback")
def rollback_command(
    plan_file: Path = typer.Argument(..., metavar="PLAN"),
    to: str | None = typer.Option(None, "--to", help="The step to return to: one of the plan's weights, shadow, or 0."),
    writes: bool = typer.Option(False, "--writes", help="Switch the writes back to the old writer (the write switch in reverse)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="With --writes: preflight and pause estimate only."),
    as_json: bool = typer.Option(False, "--json", help="With --writes: print the result as JSON."),
) -> None:
    """Roll the read route back to an earlier step now (--to), or the writes back (--writes)."""
    if writes:
        if to is not None:
            raise typer.BadParameter("give either --to (the reads) or --writes, not both")
        _writes(plan_file, "back", dry_run, as_json)
        return
    if to is None:
        raise typer.BadParameter("give --to STEP (the reads: a weight of the plan's steps, shadow, or 0) or --writes")
    _request(plan_file, "rollback", to=to)


_WRITE_EXIT = {"switched": 0, "already": 0, "estimated": 0, "refused": 1, "aborted": 1}


def _writes(plan_file: Path, direction: str, dry_run: bool, as_json: bool) -> None:
    plan = _load(plan_file)
    console = Console(stderr=True)

    def event(item: dict[str, Any]) -> None:
        if as_json:
            return
        kind = str(item.get("event", ""))
        if kind.endswith(".done") or kind in ("writes.warning",):
            step = kind.removeprefix("writes.").removesuffix(".done")
            extra = item.get("detail") or ", ".join(
                f"{k}={v}" for k, v in item.items() if k not in ("event", "plan", "direction", "at", "parts") and not isinstance(v, dict | list))
            console.print(f"  [bold]{step}[/] {extra}")

    result = control.switch_writes(plan, direction=direction, dry_run=dry_run, on_event=event)
    data = result.as_dict()
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
        raise typer.Exit(_WRITE_EXIT.get(result.outcome, 1))
    out = Console()
    if result.recovered:
        out.print(f"[yellow]recovered:[/] {result.recovered}")
    if result.checks:
        table = Table(title="preflight", title_justify="left")
        for column in ("check", "", "detail"):
            table.add_column(column)
        marks = {"ok": "[green]ok[/]", "failed": "[red]FAILED[/]", "warning": "[yellow]warning[/]"}
        for check in result.checks:
            table.add_row(check["name"], marks.get(check["status"], check["status"]), Text(check["detail"]))
        out.print(table)
    if result.estimate:
        parts = ", ".join(f"{name} {value * 1000:.1f} ms" for name, value in result.estimate["parts"].items())
        out.print(f"pause estimate: [bold]{result.estimate['pause_s'] * 1000:.1f} ms[/] of a "
                  f"{result.estimate['budget_s'] * 1000:.0f} ms budget ({parts}; the drain "
                  f"{result.estimate.get('drain_from', 'modelled')})")
    if result.timeline:
        table = Table(title="timeline", title_justify="left")
        for column in ("step", "at ms", "detail"):
            table.add_column(column)
        for item in result.timeline:
            detail = ", ".join(f"{k}={v}" for k, v in item.items() if k not in ("step", "phase", "at", "elapsed_ms"))
            table.add_row(item["step"], f"{item['elapsed_ms']:.1f}", Text(detail[:160]))
        out.print(table)
    if result.pause_s is not None:
        out.print(f"pause measured at the façade: [bold]{result.pause_s * 1000:.1f} ms[/]")
    for what, item in result.verify.items():
        if isinstance(item, dict):
            out.print(f"verify {what}: {'[green]identical[/]' if item['identical'] else '[red]differs[/]'} ({item['summary']})")
        else:
            out.print(f"{what}: {item}")
    colour = "green" if result.ok else "red"
    out.print(f"[{colour}]{result.outcome}[/]: {result.reason}")
    raise typer.Exit(_WRITE_EXIT.get(result.outcome, 1))


@app.command("writes")
def writes_command(
    plan_file: Path = typer.Argument(..., metavar="PLAN"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Run the preflight and the pause estimate, then stop: nothing is held."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Switch the write routes to the target: hold at the façade, fence, reverse stream, switch, verify.

    Every step is journaled; run it again after a crash to finish or undo the switch it left.
    Exit 0 when switched (or already), 1 when refused or aborted (then nothing changed)."""
    _writes(plan_file, "forward", dry_run, as_json)


@app.command("finish")
def finish_command(
    plan_file: Path = typer.Argument(..., metavar="PLAN"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what it would do; change nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """After the write switch's soak: collapse the routes, narrow or drop the forward stream.

    Prints what of this capability still lives in the monolith (tables it reads, columns it writes)."""
    plan = _load(plan_file)
    result = control.finish(plan, dry_run=dry_run)
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
        return
    out = Console()
    verb = "would collapse" if dry_run else "collapsed"
    out.print(f"{verb} {', '.join(result['routes'])} to {plan.target}")
    for diff in result["diffs"]:
        if diff:
            out.print(Text(diff))
    out.print(f"forward stream: {result['stream']['detail']}")
    left = result["left_in_monolith"]
    out.print("[bold]still in the monolith:[/]")
    out.print(f"  tables it reads, fed by the reverse stream: {', '.join(left['tables_read_in_monolith']) or '(none)'}")
    cols = "; ".join(f"{t}: {', '.join(c)}" for t, c in left["columns_written_by_monolith"].items())
    out.print(f"  columns it still writes: {cols or '(none)'}")
    out.print(f"  routes still on it: {', '.join(left['routes_still_on_monolith']) or '(none)'}; default: {left['default']}")


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


@app.command("schema")
def schema_command(
    output: str = typer.Option("cutover.schema.json", "-o", "--output", help="Where to write it; '-' for stdout."),
) -> None:
    """Write the JSON Schema of plan files (referenced from a plan's first line, for editors)."""
    if output == "-":
        typer.echo(schema_text(), nl=False)
        return
    write_atomically(Path(output), schema_text())
    typer.echo(f"wrote {output}")


__all__ = ["app", "schema_text"]
