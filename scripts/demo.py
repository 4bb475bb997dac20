"""`strangler demo`: the migration journey on the embedded default.

Starts a private PostgreSQL, the sample monolith, the extracted catalog service and the façade;
seeds data; fills the catalog service's own store by change data capture (snapshot, then a live
stream: a price change and an order placed through the monolith show up in the catalog service);
mirrors catalog reads to the new service and writes the shadow comparison report
(first with a deliberate, documented discrepancy switched on — `serve --demo-discrepancy` of the
catalog service — then with it fixed); then moves catalog reads 10 → 50 → 100 % with the cutover
runner (`strangler cutover run`, scripts/demo_cutover.py) while traffic goes through the façade:
a first run in which a faulty catalog build (`serve --demo-errors`) is deployed at 50 %, so the
error-rate gate fails and the runner rolls back to 10 % by itself, then, the fault fixed, a clean
run to 100 %; prints requests per upstream and the gate verdicts at each step and the journal's
summary; then, when this build has `cutover.writes`, moves catalog writes with `strangler cutover
writes` under live product writes (cutover/switches.py) and prints what the switch lost,
doubled, failed, paused and added in latency; ends with `strangler verify`, the row-by-row diff of
the two stores. Everything it started is stopped on exit or Ctrl-C.

`--stay-up` only starts the sample stack (cutover/sample_stack.py), prints where everything is (one
JSON line with `--json`) and keeps it up until Ctrl-C or SIGTERM, for `strangler cutover ...` by hand.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import typer
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from common.processes import ProcessError
from common.waiting import TimedOut, wait_until
from cutover.sample_stack import STEPS, SPEC_PATH, Stack, cutover_env, restart_catalog, sample_stack, spec_env, write_plan
from scripts.demo_cutover import (
    RunOutcome, StepRecorder, StepResult, Traffic, journal_summary, print_journal, print_step, run_cutover,
)
from cutover.switches import SwitchFailed, SwitchTiming, gated, print_switch, run_switches
from cutover.writeload import LoadSettings

FAULT_PERCENT = 30  # share of product reads the faulty catalog build answers with 500
WRITE_RATE = 100.0  # product writes per second during the write cutover: half the bench's 200, so the demo switches on a busy two-core machine too
ROUTE_ID = "catalog-read"


@dataclass
class ShadowRound:
    label: str
    discrepancy: bool
    report_path: str
    compared: int
    mismatch_rate: float
    mismatch_rate_raw: float
    real_fields: list[str]
    noise_fields: list[str]


@dataclass
class DemoEnv(Stack):
    """The stack and what the journey found on it."""

    results: list[StepResult] = field(default_factory=list)
    shadow_rounds: list[ShadowRound] = field(default_factory=list)
    fault: bool = True
    cutover_plan: Path | None = None
    cutover_runs: list[RunOutcome] = field(default_factory=list)
    cutover_status: dict[str, object] = field(default_factory=dict)
    write_switch: dict[str, Any] | None = None
    """What `run_switches` measured of the write cutover (None: not run)."""

    def failures(self) -> list[str]:
        """What went wrong on the journey, as sentences; empty when every check held."""
        problems = []
        if self.cdc is not None and not self.cdc.verify_identical:
            problems.append(f"strangler verify found differences between the legacy and catalog tables: {self.cdc.verify_tables}")
        for r in self.shadow_rounds:
            if not r.discrepancy and r.real_fields:
                problems.append(f"the shadow report of round {r.label!r} still shows real differences: {', '.join(r.real_fields)}")
        for step in self.results:
            if step.errors and step.decision == "advance":
                problems.append(f"{step.errors} requests failed at catalog weight {step.weight:g}% ({step.run} run)")
        runs = {run.label: run for run in self.cutover_runs}
        if self.fault and "with-fault" in runs and runs["with-fault"].status != "rolled_back":
            problems.append(f"the cutover run with the faulty catalog build ended {runs['with-fault'].status!r}, not rolled back")
        if "clean" in runs and (runs["clean"].status != "done" or self.cutover_status.get("weight") != 100):
            problems.append(
                f"the clean cutover run ended {runs['clean'].status!r} ({runs['clean'].reason}) at "
                f"{self.cutover_status.get('weight')}% to catalog, not done at 100%"
            )
        for switch in (self.write_switch or {}).get("switches", []):
            if switch["outcome"] != "switched":
                problems.append(f"the write cutover ended {switch['outcome']!r}: {switch['reason']}")
            elif switch["lost"] or switch["doubled"] or switch["client_errors"]:
                problems.append(
                    f"the write cutover lost {switch['lost']} acknowledged writes, doubled {switch['doubled']} and "
                    f"failed {switch['client_errors']} requests"
                )
        return problems

def demo(
    database_url: str = typer.Option(
        None, "--database-url", envvar="STRANGLER_DATABASE_URL",
        help="Use this PostgreSQL server (needs wal_level=logical) instead of the embedded one.",
    ),
    products: int = typer.Option(5000, help="Products to seed into the monolith."),
    requests_per_step: int = typer.Option(400, help="Requests sent through the façade at each weight step."),
    write_rate: float = typer.Option(
        WRITE_RATE, min=0,
        help="Product writes per second through the façade during the write cutover (0: no write cutover).",
    ),
    work_dir: Path = typer.Option(Path(".strangler/demo"), help="Where the demo keeps its files and logs."),
    discrepancy: bool = typer.Option(
        True, "--discrepancy/--no-discrepancy",
        help="Start the catalog service with its deliberate demo bug (prices rounded to whole units, "
        "attributes missing) for the first shadow round, so the report has something to find.",
    ),
    fault: bool = typer.Option(
        True, "--fault/--no-fault",
        help=f"Deploy a catalog build that fails {FAULT_PERCENT}% of product reads (serve --demo-errors) during a "
        "first cutover run, so its error-rate gate fails and the runner rolls back by itself.",
    ),
    stay_up: bool = typer.Option(
        False, "--stay-up",
        help="Only start the sample stack (PostgreSQL, monolith, catalog, façade, CDC), print where everything is "
        "(one JSON line with --json) and keep it running until Ctrl-C or SIGTERM, for `strangler cutover ...` by hand.",
    ),
    json_output: bool = typer.Option(False, "--json", help="Print the step results as JSON (with --stay-up: one line)."),
) -> None:
    """Run the whole journey on the embedded PostgreSQL: monolith, catalog service, façade,
    traffic, and the gated cutover of catalog reads with `strangler cutover run`."""
    console = Console(stderr=json_output)
    # SIGTERM (a closed terminal, a CI runner stopping) unwinds like Ctrl-C, so the children,
    # which run in sessions of their own, are stopped too.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    if stay_up:
        try:
            keep_stack_up(database_url=database_url, products=products, work_dir=work_dir, console=console,
                          requests_per_step=requests_per_step, json_output=json_output)
        except ProcessError as exc:
            console.print(f"[red]FAILED:[/red] {exc}")
            raise typer.Exit(1) from exc
        finally:
            signal.signal(signal.SIGTERM, previous)
        return
    try:
        result = run_demo(
            database_url=database_url, products=products, requests_per_step=requests_per_step,
            work_dir=work_dir, console=console, discrepancy=discrepancy, fault=fault, write_rate=write_rate,
        )
    except (ProcessError, SwitchFailed) as exc:
        console.print(f"[red]FAILED:[/red] {exc}")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; everything the demo started has been stopped.[/yellow]")
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    failures = result.failures()
    if json_output:
        typer.echo(json.dumps({
            "services": result.services(),
            "shadow": [r.__dict__ for r in result.shadow_rounds],
            "steps": [r.as_dict() for r in result.results],
            "cutover": {
                "plan": str(result.cutover_plan), "runs": [r.__dict__ for r in result.cutover_runs],
                "status": result.cutover_status,
            },
            "writes": result.write_switch,
            "cdc": result.cdc.__dict__ if result.cdc else None,
            "failures": failures,
        }, indent=2, default=str))
    for problem in failures:
        console.print(f"[red]FAILED:[/red] {problem}")
    if failures:
        raise typer.Exit(1)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def keep_stack_up(
    *, database_url: str | None, products: int, work_dir: Path, console: Console, requests_per_step: int, json_output: bool,
) -> None:
    """`strangler demo --stay-up`: the sample stack, where it is, until Ctrl-C or SIGTERM (then
    everything stopped, the slot dropped, an embedded PostgreSQL's data directory removed)."""
    try:
        with sample_stack(database_url=database_url, products=products, work_dir=work_dir, console=console,
                          db_prefix="stack", ephemeral=True) as env:
            plan = write_plan(
                env.work_dir / "cutover.yaml", routing=env.routing_path, spec=SPEC_PATH, facade_url=env.facade_url,
                journal_url=env.catalog_db, events=env.work_dir / "cutover-events.jsonl", min_requests=requests_per_step,
                reverse_spec=env.reverse_spec,
            )
            info = stack_info(env, plan)
            if json_output:
                typer.echo(json.dumps(info))
            else:
                _print_stack(console, info)
            while True:
                for child in env.group.children:
                    if child.process.poll() is not None:
                        raise ProcessError(
                            f"{child.name} exited with code {child.process.returncode}; last lines of {child.log_path}:\n{child.tail()}"
                        )
                time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("[green]✓[/green] stopped; everything the stack started has been stopped and cleaned up")


def stack_info(env: Stack, plan: Path) -> dict[str, object]:
    """What `--stay-up` prints: URLs, databases, files, and the environment for `strangler cutover ...`."""
    reverse = env.reverse_spec
    environment = cutover_env(env)
    return {
        "services": {**env.services(), "admin": f"{env.facade_url}/_strangler"},
        "databases": {"server": env.database_url, "legacy": env.legacy_db, "catalog": env.catalog_db},
        "files": {
            "routing": str(env.routing_path), "plan": str(plan), "sync_spec": str(SPEC_PATH),
            "reverse_spec": str(reverse) if reverse else None, "logs": str(env.group.log_dir), "work_dir": str(env.work_dir),
        },
        "env": environment,
        "commands": [f"strangler cutover plan {plan}", f"strangler cutover writes {plan} --dry-run",
                     f"strangler cutover writes {plan}", f"strangler cutover rollback {plan} --writes"],
        "pid": os.getpid(),
    }


def _print_stack(console: Console, info: dict[str, object]) -> None:
    files = cast(dict[str, str], info["files"])
    console.print(f"[green]✓[/green] the sample stack is up; plan {files['plan']}, routing {files['routing']}, logs {files['logs']}")
    console.print("  for `strangler cutover ...` in another shell:", highlight=False)
    for name, value in cast(dict[str, str], info["env"]).items():
        console.print(f"    export {name}={value}", markup=False, highlight=False)
    for command in cast(list[str], info["commands"]):
        console.print(f"    {command}", markup=False, highlight=False)
    console.print("  Ctrl-C (or SIGTERM) stops everything.")


def run_demo(
    *, database_url: str | None, products: int, requests_per_step: int, work_dir: Path, console: Console,
    discrepancy: bool = True, fault: bool = True, db_prefix: str = "demo", write_rate: float = WRITE_RATE,
) -> DemoEnv:
    with sample_stack(
        database_url=database_url, products=products, work_dir=work_dir, console=console, db_prefix=db_prefix,
        stack_type=DemoEnv,
    ) as stack:
        env = cast(DemoEnv, stack)
        env.fault = fault
        if discrepancy:
            console.print("[cyan]→[/cyan] deploying a catalog build with a deliberate bug (serve --demo-discrepancy)")
            restart_catalog(env, discrepancy=True)
        _shadow_round(env, console, requests_per_step, "with-discrepancy" if discrepancy else "clean", discrepancy)
        if discrepancy:
            console.print("[cyan]→[/cyan] fixing the catalog service (restarting it without the demo bug)")
            restart_catalog(env, discrepancy=False)
            _shadow_round(env, console, requests_per_step, "fixed", False)
        _cut_over(env, products, requests_per_step, console)
        if write_rate > 0:
            _cut_over_writes(env, write_rate, console)
        _verify(env, console)
        _print_summary(env, console)
        return env


def _verify(env: DemoEnv, console: Console) -> None:
    """`strangler verify`: row by row, through the mapping, at aligned positions."""
    from cdc.spec import load_spec
    from cdc.verify import verify

    spec = load_spec(SPEC_PATH, env={**os.environ, **spec_env(env)})
    with console.status("strangler verify: row-by-row diff of the legacy and catalog tables…"):
        result = verify(spec, wait=60)
    assert env.cdc is not None
    env.cdc.verify_identical = result.identical
    env.cdc.verify_tables = {
        t.target: {"matching": t.matching, "mismatched": t.mismatched, "only_in_source": t.only_in_source,
                  "only_in_target": t.only_in_target}
        for t in result.tables
    }
    mark = "[green]✓[/green]" if result.identical else "[red]✗[/red]"
    console.print(f"{mark} strangler verify: " + "; ".join(
        f"{name} {n['matching']} matching, {n['mismatched']} mismatched, "
        f"{n['only_in_source']}/{n['only_in_target']} only in source/target"
        for name, n in env.cdc.verify_tables.items()
    ))


def _shadow_numbers(env: DemoEnv) -> dict[str, object]:
    body = httpx.get(f"{env.facade_url}/_strangler/shadow", timeout=5).json()
    numbers: dict[str, object] = body["routes"].get(ROUTE_ID, {})
    numbers["store"] = body.get("store") or {}
    return numbers


def _shadow_settled(numbers: dict[str, object]) -> bool:
    """Every sampled request has been compared (or counted as failed/dropped) and stored."""
    dropped = numbers.get("dropped") or {}
    assert isinstance(dropped, dict)
    done = sum(int(numbers.get(k, 0) or 0) for k in ("compared", "timed_out", "failed", "compare_errors"))
    done += sum(int(v) for v in dropped.values())
    store = numbers.get("store") or {}
    assert isinstance(store, dict)
    return done >= int(numbers.get("sampled", 0) or 0) and int(store.get("pending", 0) or 0) == 0


def _shadow_round(env: DemoEnv, console: Console, requests: int, label: str, discrepancy: bool) -> None:
    """Catalog reads served by the monolith, mirrored to the catalog service and compared."""
    from facade.shadow import write_report

    started = time.time()
    with console.status(f"Shadowing {requests} catalog reads to the catalog service ({label})…"):
        _send_traffic(env, requests)
        with contextlib.suppress(TimedOut):  # the report says what was compared by then
            wait_until(lambda: _shadow_settled(_shadow_numbers(env)), 60, 0.2, what="the shadow worker")
    report_path = env.work_dir / f"shadow-report-{label}.html"
    since = f"{int(time.time() - started) + 1}s"
    report = write_report(f"sqlite:///{env.work_dir}/shadow.db", report_path, since=since, route=ROUTE_ID)
    real: list[str] = []
    noise: list[str] = []
    for route in report.routes:
        for endpoint in route.endpoints:
            for f in endpoint.fields:
                (real if f.real else noise).append(f"{endpoint.endpoint} {f.field}")
    env.shadow_rounds.append(ShadowRound(
        label, discrepancy, str(report_path), report.compared, report.mismatch_rate, report.mismatch_rate_raw,
        real, noise,
    ))
    dropped = Counter[str]()
    for route in report.routes:
        dropped.update(route.dropped)
    shed = "".join(f", {n} dropped ({reason.replace('_', ' ')})" for reason, n in sorted(dropped.items()) if n)
    console.print(
        f"[green]✓[/green] shadow report ({label}): {report.compared} compared{shed}, "
        f"mismatch rate {report.mismatch_rate:.1%} with noise removed ({report.mismatch_rate_raw:.1%} raw)"
    )
    for name in real[:5]:
        console.print(f"    real difference: {name}")
    for name in noise[:3]:
        console.print(f"    noise (the monolith disagrees with itself): {name}")
    console.print(f"    report: {report_path}")


def _cut_over(env: DemoEnv, products: int, requests_per_step: int, console: Console) -> None:
    """`strangler cutover run` on a plan of the demo's stack, with traffic through the façade."""
    env.cutover_plan = env.work_dir / "cutover.yaml"
    events = env.work_dir / "cutover-events.jsonl"
    events.unlink(missing_ok=True)  # the journal is new with the catalog database, so are the events
    write_plan(
        env.cutover_plan, routing=env.routing_path, spec=SPEC_PATH, facade_url=env.facade_url,
        journal_url=env.catalog_db, events=events, min_requests=requests_per_step, reverse_spec=env.reverse_spec,
    )
    run_env = {**os.environ, **spec_env(env)}
    console.print(f"[cyan]→[/cyan] cutover plan {env.cutover_plan}: catalog reads {' → '.join(f'{w}%' for w in STEPS)}, "
                  f"each step soaks 2s and {requests_per_step} requests; gates error_rate, latency, cdc, verify")
    traffic = Traffic(env.facade_url, products).start()
    try:
        if env.fault:
            console.print(f"[cyan]→[/cyan] strangler cutover run (1): a catalog build failing {FAULT_PERCENT}% of product "
                          "reads is deployed once 50% is served")
            _cutover_run(env, run_env, traffic, console, "with-fault", fault_at=50)
            console.print("[cyan]→[/cyan] fixing the catalog service (restarting it without --demo-errors)")
            traffic.hold()
            restart_catalog(env, discrepancy=False)
            traffic.go()
            console.print("[cyan]→[/cyan] strangler cutover run (2): from the last passed step, with the fixed build")
        else:
            console.print("[cyan]→[/cyan] strangler cutover run")
        _cutover_run(env, run_env, traffic, console, "clean", fault_at=None)
    finally:
        traffic.stop()
    env.cutover_status = journal_summary(env.cutover_plan, run_env)
    print_journal(console, env.cutover_plan, env.cutover_status)


def _cut_over_writes(env: DemoEnv, write_rate: float, console: Console) -> None:
    """`strangler cutover writes` on the demo's plan under live product writes, measured."""
    if importlib.util.find_spec("cutover.writes") is None or env.reverse_spec is None:
        console.print("[yellow]![/yellow] no write cutover: this build has no cutover.writes or no reverse stream spec")
        return
    assert env.cutover_plan is not None
    console.print(
        f"[cyan]→[/cyan] strangler cutover writes {env.cutover_plan}: catalog-write moves to the catalog service under "
        f"{write_rate:g} writes/s (hold at the façade, fence, reverse stream)", highlight=False,
    )
    load = LoadSettings(rate=write_rate, read_rate=20, order_rate=5, pool=100)
    env.write_switch = run_switches(
        env, "demo", [("write cutover", gated("forward", env.cutover_plan))], load=load,
        timing=SwitchTiming(steady=3.0, soak=3.0), console=console,
    )
    for switch in env.write_switch["switches"]:
        print_switch(console, switch)
    stores = env.write_switch["stores"]
    console.print(
        f"    checked both stores: legacy {stores['legacy']['rows']} rows of the load, service {stores['service']['rows']}; "
        f"{env.write_switch['requests']} requests at {env.write_switch['writes_per_s']:.0f} writes/s", highlight=False,
    )


def _cutover_run(
    env: DemoEnv, run_env: dict[str, str], traffic: Traffic, console: Console, label: str, fault_at: float | None,
) -> None:
    def applied(weight: float, why: str) -> None:
        if why == "advance":
            console.print(f"    {ROUTE_ID} → catalog {weight:g}%: every façade replica serves it; soaking")
        else:
            console.print(f"    [yellow]↩[/yellow] {ROUTE_ID} rolled back to catalog {weight:g}% by the runner ({why})")
        if fault_at is not None and why == "advance" and weight == fault_at:
            console.print(f"    [yellow]![/yellow] deploying the faulty catalog build (serve --demo-errors {FAULT_PERCENT})")
            traffic.hold()  # no reads while the service restarts: the gate must judge the build, not the restart
            restart_catalog(env, discrepancy=False, errors=FAULT_PERCENT)
            traffic.go()

    recorder = StepRecorder(label, traffic, lambda: _requests_by_upstream(env), lambda r: print_step(console, r), applied)
    assert env.cutover_plan is not None
    outcome = run_cutover(env.cutover_plan, run_env, recorder)
    outcome.label = label
    env.results.extend(recorder.results)
    env.cutover_runs.append(outcome)
    mark = "[green]✓[/green]" if outcome.status == "done" else "[yellow]↩[/yellow]" if outcome.status == "rolled_back" else "[red]✗[/red]"
    console.print(f"{mark} cutover run ({label}): {outcome.status} — {outcome.reason}", highlight=False)


def _requests_by_upstream(env: DemoEnv) -> dict[str, float]:
    text = httpx.get(f"{env.facade_url}/_strangler/metrics", timeout=5).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "strangler_requests":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("route") == ROUTE_ID:
                upstream = sample.labels.get("upstream", "?")
                counts[upstream] = counts.get(upstream, 0) + sample.value
    return counts


def _send_traffic(env: DemoEnv, total: int) -> None:
    """Anonymous clients, each with its own cookie jar (so its own sticky assignment cookie),
    read products through the façade (all of them on the monolith, mirrored for the shadow round)."""
    per_client = 2
    for client_no in range(max(1, total // per_client)):
        with httpx.Client(base_url=env.facade_url, timeout=10) as client:
            for i in range(per_client):
                client.get(f"/api/products/{1 + (client_no * per_client + i) % 1000}")


def _print_summary(env: DemoEnv, console: Console) -> None:
    table = Table(title="Catalog reads through the façade, per cutover step")
    for column in ("run", "catalog weight", "requests", "→ monolith", "→ catalog", "catalog share", "errors", "gates"):
        table.add_column(column, justify="left" if column in ("run", "gates") else "right")
    for r in env.results:
        share = r.per_upstream.get("catalog", 0) / r.total if r.total else 0.0
        table.add_row(
            r.run, f"{r.weight:g}%", str(r.total), str(r.per_upstream.get("monolith", 0)),
            str(r.per_upstream.get("catalog", 0)), f"{share:.0%}", str(r.errors), r.decision,
        )
    console.print(table)
    console.print(f"Logs of every process: {env.group.log_dir}")
