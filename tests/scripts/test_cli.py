"""The `strangler` command itself, run as a user runs it: the installed console script."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STRANGLER = Path(sys.executable).parent / "strangler"


def test_version_prints_the_version_of_the_installed_package() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

    result = subprocess.run([str(STRANGLER), "--version"], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"strangler {declared}\n"
    assert result.stderr == ""
