"""Reading the gates' sources: the façade replicas' admin API, the shadow store, CDC status, verify.

The I/O shell around `cutover.gates`. The façade is read only through its admin API
(`/_strangler/routes` for the config version and content hash, `/_strangler/metrics` for the
per-route, per-upstream counters and histograms); CDC through `cdc.status.status` and
`cdc.verify.verify`; the shadow store through its `load`. Each source's failure is a
`SourceUnreachable` that names it and the fix; `Sources.read` turns those into "unreadable",
which the gates judge inconclusive.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cutover.exceptions import CutoverError, SourceUnreachable
from cutover.gates import (
    CdcReading,
    CommandReading,
    Readings,
    RouteTraffic,
    ShadowReading,
    UpstreamTraffic,
    VerifyReading,
)
from cutover.plan import Plan

__all__ = ["AdminClient", "HttpAdmin", "ReplicaState", "Sources", "parse_traffic", "shadow_store_class"]


def shadow_store_class() -> Any:
    """The shadow store's class, imported in this one place (only a shadow gate needs it)."""
    from facade.shadow import ShadowStore

    return ShadowStore


class AdminClient(Protocol):
    """The façade's admin API, per replica base URL."""

    def get(self, replica: str, endpoint: str) -> httpx.Response: ...

    def post(self, replica: str, endpoint: str) -> httpx.Response: ...


class HttpAdmin:
    """`AdminClient` over httpx, with the admin bearer token when one is set."""

    def __init__(self, *, token: str | None = None, timeout: float = 5.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(headers=headers, timeout=timeout, trust_env=False)

    def _call(self, method: str, replica: str, endpoint: str) -> httpx.Response:
        url = f"{replica.rstrip('/')}/_strangler/{endpoint}"
        try:
            response = self.client.request(method, url)
        except httpx.HTTPError as exc:
            raise SourceUnreachable(
                f"cannot reach the façade replica {replica} ({method} {url}: {exc.__class__.__name__}: {exc}); "
                "check facade.replicas in the plan and that the façade runs"
            ) from exc
        if response.status_code == 401:
            raise SourceUnreachable(
                f"the façade replica {replica} refused the admin token (401); set the variable named by facade.token_env"
            )
        return response

    def get(self, replica: str, endpoint: str) -> httpx.Response:
        return self._call("GET", replica, endpoint)

    def post(self, replica: str, endpoint: str) -> httpx.Response:
        return self._call("POST", replica, endpoint)

    def close(self) -> None:
        self.client.close()


@dataclass(frozen=True)
class ReplicaState:
    """What one replica serves: the config version, the hash of the file it loaded, its last reload error."""

    url: str
    version: str
    content_hash: str
    last_error: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "version": self.version, "content_hash": self.content_hash, "last_error": self.last_error}


def parse_traffic(text: str, routes: tuple[str, ...]) -> RouteTraffic:
    """The routes' per-upstream requests, 5xx answers and request-duration histogram from Prometheus text."""
    requests: dict[str, int] = {}
    errors: dict[str, int] = {}
    buckets: dict[str, dict[float, int]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("route") not in routes:
                continue
            upstream = labels.get("upstream", "")
            if sample.name == "strangler_requests_total":
                requests[upstream] = requests.get(upstream, 0) + int(sample.value)
                if labels.get("status") in ("5xx", "none"):
                    errors[upstream] = errors.get(upstream, 0) + int(sample.value)
            elif sample.name == "strangler_request_duration_seconds_bucket":
                bound = float(labels["le"])
                per = buckets.setdefault(upstream, {})
                per[bound] = per.get(bound, 0) + int(sample.value)
    names = list(dict.fromkeys([*requests, *buckets]))
    return RouteTraffic(
        {
            name: UpstreamTraffic(requests.get(name, 0), errors.get(name, 0), tuple(sorted(buckets.get(name, {}).items())))
            for name in names
        }
    )


class Sources:
    """Every source a plan's gates read, built from the plan (and the environment given at the edge)."""

    def __init__(
        self,
        plan: Plan,
        *,
        env: Mapping[str, str] | None = None,
        admin: AdminClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.plan = plan
        self.env = dict(os.environ if env is None else env)
        if admin is None:
            token = self.env.get(plan.facade.token_env) if plan.facade.token_env else None
            admin = HttpAdmin(token=token or None, timeout=plan.facade.timeout)
        self.admin = admin
        self.clock = clock

    # -- façade ---------------------------------------------------------------------------------

    def replicas(self) -> list[ReplicaState]:
        """Every replica's config version and content hash."""
        states = []
        for replica in self.plan.facade.replicas:
            response = self.admin.get(replica, "routes")
            if response.status_code != 200:
                raise SourceUnreachable(f"the façade replica {replica} answered {response.status_code} to GET /_strangler/routes")
            body = response.json()
            error = body.get("last_error")
            problems = (error or {}).get("problems") or []
            states.append(
                ReplicaState(replica, str(body.get("version")), str(body.get("content_hash")), problems[0] if problems else None)
            )
        return states

    def reload(self) -> None:
        """Ask every replica to reload now (plans with `facade.reload: api`)."""
        for replica in self.plan.facade.replicas:
            response = self.admin.post(replica, "reload")
            if response.status_code == 422:
                problems = response.json().get("problems") or ["(no detail)"]
                raise CutoverError(f"the façade replica {replica} rejected the routing file: {problems[0]}")

    def traffic(self) -> RouteTraffic:
        """The moved routes' traffic, summed over every replica."""
        total = RouteTraffic()
        for replica in self.plan.facade.replicas:
            response = self.admin.get(replica, "metrics")
            if response.status_code != 200:
                raise SourceUnreachable(f"the façade replica {replica} answered {response.status_code} to GET /_strangler/metrics")
            total = total.plus(parse_traffic(response.text, self.plan.routes))
        return total

    # -- shadow store, CDC, verify, command -------------------------------------------------------

    def shadow(self, since: float) -> ShadowReading:
        """Live comparisons of the routes since `since` (epoch seconds); failures count as mismatches."""
        from facade.config import ConfigError, load_config
        from facade.exceptions import FacadeError

        try:
            config = load_config(self.plan.routing, env=self.env)
            store = shadow_store_class().from_config(config.shadow_store)
        except (ConfigError, FacadeError) as exc:
            raise SourceUnreachable(f"cannot open the shadow store named by {self.plan.routing}: {exc}") from exc
        compared = mismatched = 0
        try:
            for route in self.plan.routes:
                try:
                    data = store.load(since=since, route=route)
                except FacadeError as exc:
                    if "holds no comparisons yet" in str(exc):
                        continue
                    raise SourceUnreachable(str(exc)) from exc
                for row in data.comparisons:
                    if row.get("source") != "live":
                        continue
                    compared += 1
                    if row.get("outcome") != "compared" or not row.get("match_denoised"):
                        mismatched += 1
        finally:
            store.close()
        return ShadowReading(compared, mismatched)

    def _spec(self) -> Any:
        from cdc.exceptions import CDCError
        from cdc.spec import load_spec

        if self.plan.sync is None:
            raise SourceUnreachable("the plan names no sync spec (sync:), which the cdc and verify gates read")
        try:
            return load_spec(self.plan.sync, env=self.env)
        except CDCError as exc:
            raise SourceUnreachable(f"the sync spec does not load: {exc}") from exc

    def cdc(self) -> CdcReading:
        from cdc.exceptions import CDCError
        from cdc.status import status

        try:
            result = status(self._spec())
        except CDCError as exc:
            raise SourceUnreachable(f"CDC status: {exc}") from exc
        return CdcReading(result.lag_seconds, result.dead_letters)

    def verify(self, wait: float) -> tuple[bool, str]:
        """Run the row-by-row verify now: (identical, summary)."""
        from cdc.exceptions import CDCError
        from cdc.verify import verify

        try:
            result = verify(self._spec(), wait=wait)
        except CDCError as exc:
            raise SourceUnreachable(f"verify: {exc}") from exc
        parts = []
        for table in result.tables:
            if table.identical:
                parts.append(f"{table.target} {table.matching} rows identical")
            else:
                parts.append(
                    f"{table.target} {table.mismatched} mismatched, {table.only_in_source} only in source, "
                    f"{table.only_in_target} only in target"
                )
        return result.identical, "; ".join(parts)

    def command(self, step: str, weight: float) -> CommandReading:
        gate = self.plan.gates.command
        assert gate is not None
        env = {**self.env, "CUTOVER_PLAN": self.plan.name, "CUTOVER_STEP": step, "CUTOVER_WEIGHT": f"{weight:g}"}
        try:
            done = subprocess.run(
                ["/bin/sh", "-c", gate.run], capture_output=True, text=True, timeout=gate.timeout, env=env, check=False
            )
        except subprocess.TimeoutExpired:
            return CommandReading(None, f"timed out after {gate.timeout:g}s")
        except OSError as exc:
            return CommandReading(None, f"could not start: {exc}")
        return CommandReading(done.returncode, (done.stdout + done.stderr)[-2000:])

    # -- all together --------------------------------------------------------------------------

    def read(
        self,
        *,
        window_start: RouteTraffic,
        run_start: RouteTraffic,
        since: float,
        step: str,
        weight: float,
        last_verify: tuple[float, bool, str] | None,
        on_verify: Callable[[bool, str], None] | None = None,
    ) -> tuple[Readings, RouteTraffic]:
        """Every gate's reading now, and the raw traffic counters read (the next baseline)."""
        gates = self.plan.gates
        unreadable: dict[str, str] = {}
        now_traffic = RouteTraffic()
        try:
            now_traffic = self.traffic()
        except CutoverError as exc:
            for name in ("error_rate", "latency"):
                unreadable[name] = str(exc)
        shadow = cdc = verify = command = None
        if gates.shadow_mismatch is not None:
            try:
                shadow = self.shadow(since)
            except CutoverError as exc:
                unreadable["shadow_mismatch"] = str(exc)
        if gates.cdc is not None:
            try:
                cdc = self.cdc()
            except CutoverError as exc:
                unreadable["cdc"] = str(exc)
        if gates.verify is not None:
            now = self.clock()
            if last_verify is not None and now - last_verify[0] <= gates.verify.max_age:
                verify = VerifyReading(last_verify[1], now - last_verify[0], last_verify[2])
            else:
                try:
                    identical, summary = self.verify(gates.verify.wait)
                except CutoverError as exc:
                    unreadable["verify"] = str(exc)
                else:
                    verify = VerifyReading(identical, 0.0, summary)
                    if on_verify is not None:
                        on_verify(identical, summary)
        if gates.command is not None:
            command = self.command(step, weight)
        readings = Readings(
            window=now_traffic.minus(window_start),
            reference=now_traffic.minus(run_start),
            shadow=shadow,
            cdc=cdc,
            verify=verify,
            command=command,
            unreadable=unreadable,
        )
        return readings, now_traffic
