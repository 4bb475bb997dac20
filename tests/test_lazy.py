"""The packages name their API without importing it: each name resolves on first use, and the
exceptions every CLI command imports do not pull in the rest of the package."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("package", ["cdc", "cutover"])
def test_every_name_of_the_api_resolves(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
        assert name in dir(module)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        module.nope  # noqa: B018


def test_importing_the_exceptions_loads_no_other_module_of_the_package() -> None:
    probe = ("import sys, cdc.exceptions, cutover.exceptions; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('cdc', 'cutover')))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "['cdc', 'cdc.exceptions', 'cutover', 'cutover.exceptions']", loaded


def test_the_cli_imports_a_command_only_when_it_runs() -> None:
    """`strangler cutover status` does not pay for the façade server, the demo or the CDC pipeline."""
    heavy = ("sqlalchemy", "aiohttp", "uvicorn", "starlette", "httpx")
    probe = ("import sys, scripts.cli; "
             f"print(sorted(m for m in sys.modules if m.endswith('_cmd') or m == 'scripts.demo' or m in {heavy!r}))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", loaded

    from scripts.cli import COMMANDS, app
    from typer.main import get_command

    group = get_command(app)
    assert group.list_commands(None) == list(COMMANDS)  # listed without importing, in the help's order
    assert group.get_command(None, "cutover").name == "cutover"
    assert "scripts.cutover_cmd" in sys.modules
