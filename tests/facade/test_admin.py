"""The admin API under /_strangler/: token rule, endpoints, metrics exposition."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from facade.app import create_app, is_loopback
from facade.errors import AdminTokenMissing
from tests.facade.proxy_support import get, post, request, echo, facade, refused_url, serve, write_config

ENDPOINTS = [("GET", "health"), ("GET", "routes"), ("GET", "metrics"), ("POST", "reload")]


def test_a_non_loopback_bind_without_a_token_refuses_to_start(tmp_path: Path) -> None:
    config = write_config(tmp_path / "routing.yaml", {"monolith": "http://127.0.0.1:9"})
    with pytest.raises(AdminTokenMissing, match="STRANGLER_ADMIN_TOKEN"):
        create_app(config, host="0.0.0.0", env={})
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")


def test_a_non_loopback_bind_requires_the_bearer_token_on_every_endpoint(tmp_path: Path) -> None:
    with serve(echo("monolith")) as up:
        config = write_config(tmp_path / "routing.yaml", {"monolith": up})
        with facade(config, host="0.0.0.0", env={"STRANGLER_ADMIN_TOKEN": "s3cret"}) as (url, _):
            for method, name in ENDPOINTS:
                anonymous = request(method, f"{url}/_strangler/{name}")
                wrong = request(method, f"{url}/_strangler/{name}", headers={"Authorization": "Bearer nope"})
                right = request(method, f"{url}/_strangler/{name}", headers={"Authorization": "Bearer s3cret"})
                assert anonymous.status_code == 401 and anonymous.json()["error"] == "unauthorized"
                assert wrong.status_code == 401
                assert right.status_code == 200, (name, right.text)
            # The proxied traffic needs no token.
            assert get(url + "/api/x").status_code == 200


def test_the_token_comes_from_the_variable_admin_token_env_names(tmp_path: Path) -> None:
    with serve(echo("monolith")) as up:
        config = write_config(tmp_path / "routing.yaml", {"monolith": up}, extra="admin: {token_env: FACADE_OPS_TOKEN}")
        # The default variable alone does not make a non-loopback bind acceptable.
        with pytest.raises(AdminTokenMissing, match="FACADE_OPS_TOKEN"):
            create_app(config, host="0.0.0.0", env={"STRANGLER_ADMIN_TOKEN": "default-token"})
        env = {"FACADE_OPS_TOKEN": "ops-token", "STRANGLER_ADMIN_TOKEN": "default-token"}
        with facade(config, host="0.0.0.0", env=env) as (url, _):
            named = get(url + "/_strangler/health", headers={"Authorization": "Bearer ops-token"})
            default = get(url + "/_strangler/health", headers={"Authorization": "Bearer default-token"})
    assert named.status_code == 200 and named.json()["status"] == "ok"
    assert default.status_code == 401 and default.json()["error"] == "unauthorized"


def test_loopback_needs_no_token(tmp_path: Path) -> None:
    with serve(echo("monolith")) as up:
        config = write_config(tmp_path / "routing.yaml", {"monolith": up})
        with facade(config, env={"STRANGLER_ADMIN_TOKEN": "s3cret"}) as (url, _):
            for method, name in ENDPOINTS:
                assert request(method, f"{url}/_strangler/{name}").status_code == 200


def test_unknown_admin_paths_and_methods_answer_json(tmp_path: Path) -> None:
    with serve(echo("monolith")) as up:
        config = write_config(tmp_path / "routing.yaml", {"monolith": up})
        with facade(config) as (url, _):
            missing = get(url + "/_strangler/nothing")
            bare = get(url + "/_strangler")
            wrong_method = get(url + "/_strangler/reload")
            lookalike = get(url + "/_stranglerx/health")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert bare.status_code == 404
    assert wrong_method.status_code == 405 and wrong_method.json()["error"] == "method_not_allowed"
    assert lookalike.status_code == 200 and lookalike.json()["upstream"] == "monolith"


class BrokenSnapshot:
    """An addon whose admin snapshot raises."""

    admin_name = "broken"

    def snapshot(self) -> object:
        raise RuntimeError("the snapshot broke")


def test_admin_errors_are_json_with_the_request_id(tmp_path: Path) -> None:
    auth = {"Authorization": "Bearer s3cret"}
    with serve(echo("monolith")) as up:
        config = write_config(tmp_path / "routing.yaml", {"monolith": up})
        env = {"STRANGLER_ADMIN_TOKEN": "s3cret"}
        with facade(config, host="0.0.0.0", env=env, addons=[BrokenSnapshot()]) as (url, _):
            denied = get(url + "/_strangler/routes", headers={"X-Request-ID": "ops-401"})
            missing = get(url + "/_strangler/nothing", headers=auth)
            malformed = get(url + "/_strangler/nothing", headers={**auth, "X-Request-ID": "has space"})
            wrong_method = get(url + "/_strangler/reload", headers={**auth, "X-Request-ID": "ops-405"})
            broken = get(url + "/_strangler/broken", headers={**auth, "X-Request-ID": "ops-500"})
            health = get(url + "/_strangler/health", headers={**auth, "X-Request-ID": "ops-200"})
    answers = [(denied, 401, "unauthorized"), (missing, 404, "not_found"), (malformed, 404, "not_found"),
               (wrong_method, 405, "method_not_allowed"), (broken, 500, "admin_error")]
    for response, status, reason in answers:
        body = response.json()
        assert (response.status_code, body["error"]) == (status, reason), response.text
        assert body["request_id"] == response.headers["x-request-id"] and body["detail"]
        assert response.headers["content-type"] == "application/json"
    # The client's id is kept when well-formed; otherwise the façade makes one.
    assert denied.json()["request_id"] == "ops-401" and denied.headers["www-authenticate"].startswith("Bearer")
    assert wrong_method.json()["request_id"] == "ops-405" and wrong_method.headers["allow"] == "POST"
    assert broken.json()["request_id"] == "ops-500" and "the snapshot broke" in broken.json()["detail"]
    for made in (missing, malformed):
        assert re.fullmatch("[0-9a-f]{32}", made.json()["request_id"])
    assert missing.json()["request_id"] != malformed.json()["request_id"]
    assert health.status_code == 200 and health.headers["x-request-id"] == "ops-200"


def test_routes_and_metrics_show_the_live_state(tmp_path: Path) -> None:
    routes = """
    - id: catalog-read
      match: {path: /api/products/**}
      to: {monolith: 0, catalog: 100}
      retries: {attempts: 1}
      fallback: monolith
    """
    with serve(echo("monolith")) as monolith:
        config = write_config(
            tmp_path / "routing.yaml", {"monolith": monolith, "catalog": refused_url()}, routes=routes,
            extra="breaker: {failures: 1, reset_after: 60s}",
        )
        with facade(config) as (url, _):
            for _ in range(3):
                assert get(url + "/api/products/7").status_code == 200
            assert post(url + "/api/products").status_code == 503
            assert get(url + "/home").status_code == 200
            reload = post(url + "/_strangler/reload").json()
            view = get(url + "/_strangler/routes").json()
            health = get(url + "/_strangler/health").json()
            text = get(url + "/_strangler/metrics").text
    assert reload["ok"] and view["version"] == reload["version"] == health["version"]
    assert view["last_error"] is None and view["loaded_at"].endswith("Z")
    assert [route["id"] for route in view["table"]["routes"]] == ["catalog-read"]
    assert view["breakers"]["catalog"] == "open"
    families = {family.name: family for family in text_string_to_metric_families(text)}
    requests = {
        (s.labels["route"], s.labels["upstream"], s.labels["method"], s.labels["status"]): s.value
        for s in families["strangler_requests"].samples if s.name.endswith("_total")
    }
    assert requests == {
        ("catalog-read", "monolith", "GET", "2xx"): 3.0,
        ("catalog-read", "catalog", "POST", "5xx"): 1.0,
        ("default", "monolith", "GET", "2xx"): 1.0,
    }
    errors = {(s.labels["upstream"], s.labels["reason"]): s.value for s in families["strangler_errors"].samples if s.name.endswith("_total")}
    assert errors == {("catalog", "circuit_open"): 1.0}
    counts = {
        (s.labels["route"], s.labels["upstream"]): s.value
        for s in families["strangler_request_duration_seconds"].samples if s.name.endswith("_count")
    }
    assert counts[("catalog-read", "monolith")] == 3.0
    assert any(s.name.endswith("_count") for s in families["strangler_upstream_duration_seconds"].samples)
    breaker = {s.labels["upstream"]: s.value for s in families["strangler_breaker_state"].samples}
    assert breaker["catalog"] == 2.0
    reloads = {s.labels["result"]: s.value for s in families["strangler_reloads"].samples if s.name.endswith("_total")}
    assert reloads == {"ok": 1.0, "error": 0.0}
    (info,) = families["strangler_config_info"].samples
    assert info.labels["version"] == view["version"]
