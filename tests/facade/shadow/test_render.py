"""The HTML report rendered by a real browser: headless Chromium (Debian's `chromium` package)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path


from facade.shadow.render import render
from facade.shadow.report import make_report
from facade.shadow.store import ShadowStore
from tests.facade.shadow.test_report import SECRET, seed

ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts"
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


# Appended to a copy of the report: every chart, series, bar and table as laid out, into the DOM.
MEASURE = """<pre id="layout"></pre><script>
const out = [];
for (const what of ["svg.chart", "polyline.series", "rect.bar", "table"]) {
  for (const el of document.querySelectorAll(what)) {
    const box = el.getBoundingClientRect(), style = getComputedStyle(el);
    out.push({what, width: box.width, height: box.height, rows: el.rows ? el.rows.length : 0, stroke: style.stroke,
              visible: style.display !== "none" && style.visibility !== "hidden" && Number(style.opacity) > 0 && box.width > 0 && box.height > 0});
  }
}
document.getElementById("layout").textContent = JSON.stringify(out);
</script>"""


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


# `make test` installs Chromium (as root); without it this fails saying how to get it, never skips.
def test_html_report_renders_charts_and_tables_in_chromium(tmp_path: Path) -> None:
    assert CHROMIUM is not None, "chromium not found; install it with: sudo apt-get update && sudo apt-get install -y chromium (or, as root, make test-tools)"
    url = f"sqlite:///{tmp_path}/shadow.db"
    seed(url)
    store = ShadowStore(url)
    page = tmp_path / "report.html"
    page.write_text(render(make_report(store), "html"), encoding="utf-8")
    store.close()

    dumped = chromium(tmp_path, "--dump-dom", page.as_uri())
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = dumped.stdout
    # The report carries no script; a copy with one measures what the browser laid out and painted:
    # charts, their series and bars, and the tables, each visible with a size on the page.
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", MEASURE + "</body>"), encoding="utf-8")
    measured = chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    assert measured.returncode == 0, measured.stderr[-2000:]
    layout = json.loads(html.unescape(re.search(r'<pre id="layout">(.*?)</pre>', measured.stdout, re.S).group(1)))
    charts = [b for b in layout if b["what"] == "svg.chart"]
    assert len(charts) == 2 and all(b["visible"] and b["width"] > 200 and b["height"] > 80 for b in charts), charts
    (series,) = [b for b in layout if b["what"] == "polyline.series"]
    assert series["visible"] and series["width"] > 50 and series["stroke"] not in ("none", "rgba(0, 0, 0, 0)"), series
    bars = [b for b in layout if b["what"] == "rect.bar"]
    assert len(bars) == 6 and all(b["visible"] and b["height"] > 0 and b["width"] > 0 for b in bars), bars
    assert len({round(b["width"], 1) for b in bars}) > 1  # bars as long as their values, not all alike
    tables = [b for b in layout if b["what"] == "table"]
    assert len(tables) >= 4 and all(b["visible"] and b["height"] > 20 and b["rows"] >= 2 for b in tables), tables
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
