"""docker-compose.yml of the distributed mode: its structure, checked without a Docker engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from cdc.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
CONNECTOR = json.loads((ROOT / "docker" / "debezium-catalog.json").read_text())
SPEC = load_spec(ROOT / "extracted" / "catalog" / "sync.yaml", env={})


def _command(service: str) -> list[str]:
    command = SERVICES[service]["command"]
    return command if isinstance(command, list) else command.split()


def test_every_part_of_the_distributed_mode_is_there() -> None:
    assert {"postgres", "kafka", "connect", "connect-register", "monolith", "catalog", "facade", "applier", "reverse"} <= set(SERVICES)
    assert "zookeeper" not in SERVICES


def test_postgres_runs_with_logical_replication() -> None:
    command = " ".join(_command("postgres"))
    assert "wal_level=logical" in command


def test_kafka_runs_in_kraft_mode() -> None:
    env = SERVICES["kafka"]["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@kafka:")


def test_images_are_pinned() -> None:
    for name, service in SERVICES.items():
        image = service.get("image")
        assert image, f"{name} has no image"
        tag = image.rsplit(":", 1)[-1] if ":" in image.split("/")[-1] else ""
        assert tag and tag != "latest", f"{name} uses an unpinned image {image!r}"
    with (ROOT / "docker" / "Dockerfile").open() as dockerfile:
        base = next(line for line in dockerfile if line.startswith("FROM ")).split()[1]
    assert ":" in base and not base.endswith(":latest")


def test_connector_topics_match_the_sync_spec() -> None:
    config = CONNECTOR["config"]
    assert config["connector.class"] == "io.debezium.connector.postgresql.PostgresConnector"
    assert config["plugin.name"] == "pgoutput"
    assert config["topic.prefix"] == SPEC.topic_prefix
    assert sorted(config["table.include.list"].split(",")) == sorted(t.source for t in SPEC.tables)
    assert config["value.converter"] == "org.apache.kafka.connect.json.JsonConverter"
    # Debezium 2.x skips truncates unless told otherwise ("t" by default); the applier handles them.
    assert config["skipped.operations"] == "none"
    # Debezium's slot and publication must not collide with the embedded mode's ones.
    assert config["slot.name"] != SPEC.slot_name and config["publication.name"] != SPEC.publication_name


def test_registration_job_posts_the_connector_file() -> None:
    register = SERVICES["connect-register"]
    assert any("debezium-catalog.json" in volume for volume in register["volumes"])
    assert "connect:8083/connectors" in " ".join(_command("connect-register"))
    assert register["depends_on"]["connect"]["condition"] == "service_healthy"


def test_applier_consumes_debezium_topics_with_the_catalog_spec() -> None:
    command = _command("applier")
    assert command[:3] == ["strangler", "cdc", "run"]
    spec_path = command[command.index("--spec") + 1]
    assert (ROOT / spec_path).resolve() == (ROOT / "extracted" / "catalog" / "sync.yaml").resolve()
    assert command[command.index("--transport") + 1] == "kafka"
    assert "--no-capture" in command  # Debezium Connect captures
    env = SERVICES["applier"]["environment"]
    assert env["STRANGLER_CATALOG_DATABASE_URL"].endswith("/catalog")
    assert "connect-register" in SERVICES["applier"]["depends_on"]


def test_services_reach_each_other_by_name() -> None:
    env = SERVICES["facade"]["environment"]
    assert env["MONOLITH_URL"] == "http://monolith:8001" and env["CATALOG_URL"] == "http://catalog:8002"
    assert "routing.yaml" in _command("facade")
    init = (ROOT / "docker" / "postgres-init.sql").read_text()
    for url in (SERVICES["applier"]["environment"]["STRANGLER_MONOLITH_DATABASE_URL"],
                SERVICES["applier"]["environment"]["STRANGLER_CATALOG_DATABASE_URL"]):
        assert f"CREATE DATABASE {url.rsplit('/', 1)[1]};" in init
    assert CONNECTOR["config"]["database.dbname"] == "legacy"


def test_the_reverse_stream_runs_strangler_s_own_capture_on_the_reverse_spec() -> None:
    assert _command("reverse") == ["strangler", "cdc", "run", "--spec", "extracted/catalog/reverse.yaml"]
    assert "migrate" in SERVICES["reverse"]["depends_on"]
