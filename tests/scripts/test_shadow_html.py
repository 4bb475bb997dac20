"""The HTML report rendered by a real browser: headless Chromium (Debian's `chromium` package)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from facade.shadow_store import ShadowStore
from scripts.shadow_cmd import make_report
from scripts.shadow_report import render
from tests.scripts.test_shadow_report import SECRET, seed

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,2000",
]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    profile = tmp_path / "profile"
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


# `make test` installs Chromium when it runs as root (as CI does), so there a missing browser is
# a failure; only a user who cannot install packages gets a skip, with the command to run.
@pytest.mark.skipif(CHROMIUM is None and os.geteuid() != 0, reason="needs Debian's chromium: sudo apt-get update && sudo apt-get install -y chromium")
def test_html_report_renders_charts_and_tables_in_chromium(tmp_path: Path) -> None:
    assert CHROMIUM is not None, "chromium not found; make test installs it as root: apt-get update && apt-get install -y chromium"
    url = f"sqlite:///{tmp_path}/shadow.db"
    seed(url)
    store = ShadowStore(url)
    page = tmp_path / "report.html"
    page.write_text(render(make_report(store), "html"), encoding="utf-8")
    store.close()

    dumped = chromium(tmp_path, "--dump-dom", page.as_uri())
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = dumped.stdout
    assert len(re.findall(r'<svg class="chart"', dom)) == 2
    assert re.search(r'<polyline class="series" points="[\d., ]+"', dom)  # the mismatch-rate line
    assert len(re.findall(r'<rect class="bar"', dom)) == 6  # p50/p95/p99 × primary/candidate
    assert '<table id="routes">' in dom and "catalog-read" in dom
    assert re.search(r"<code>\$\.price</code></td><td class=\"real\">real", dom)
    assert re.search(r"<code>\$\.generated</code></td><td class=\"noise\">noise", dom)
    assert SECRET not in dom

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "shadow_report.png"
    shot.unlink(missing_ok=True)
    taken = chromium(tmp_path, f"--screenshot={shot}", page.as_uri())
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
