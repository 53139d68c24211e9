"""`dsm ui` in a real browser: headless Chromium (Debian's, installed by
`scripts/setup.sh --dev`) driven by Playwright, on a real `dsm ui` over a workspace that a real
`dsm train` filled. The screenshots are kept in test-artifacts/ui/ (or $DSM_TEST_ARTIFACTS/ui/).

Without Chromium or Playwright the test is skipped, saying why; under CI=true it fails instead.
"""

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from dsm.runtime.cluster import free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


def _browser_or_skip():
    """Playwright's sync API, or a skip (a failure under CI=true) naming what is missing."""
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"no Chromium at {CHROMIUM} (apt-get install chromium; scripts/setup.sh --dev does)")
    try:
        from playwright import sync_api
    except ImportError:
        missing.append("no playwright Python package (pip install -e '.[dev]')")
    if missing:
        reason = "browser test of dsm ui: " + "; ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return sync_api


def _shots() -> Path:
    folder = Path(os.environ.get("DSM_TEST_ARTIFACTS", REPO / "test-artifacts")) / "ui"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _start_ui(ws: Path) -> tuple[subprocess.Popen, str]:
    """A real `dsm ui` on a free port; returns it and the runs URL it printed, once it answers."""
    ui = subprocess.Popen([sys.executable, "-m", "dsm.cli", "ui", "--workspace", str(ws), "--port", str(free_port())],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url, seen, deadline = None, [], time.time() + 120
    while url is None and time.time() < deadline:
        line = ui.stdout.readline()
        seen.append(line)
        if m := re.match(r"MLflow UI: (\S+)", line):
            url = m.group(1)
        assert ui.poll() is None, "".join(seen)
    assert url and "/runs?workflowType=machine_learning" in url, "".join(seen)
    root = url.split("#")[0]
    while time.time() < deadline:
        try:
            urllib.request.urlopen(root, timeout=2).read()
            return ui, url
        except OSError:
            time.sleep(0.5)
    pytest.fail("dsm ui did not answer: " + "".join(seen)[-2000:])


def _stop(ui: subprocess.Popen) -> None:
    """SIGTERM, as a user's Ctrl-C or a supervisor would; nothing of its group may stay."""
    group = [ui, *psutil.Process(ui.pid).children(recursive=True)]
    ui.send_signal(signal.SIGTERM)
    ui.wait(30)
    gone, alive = psutil.wait_procs([p for p in group if not isinstance(p, subprocess.Popen)], timeout=15)
    assert not alive, f"left running after SIGTERM: {[p.pid for p in alive]}"


def test_the_ui_opens_on_the_runs_with_data_model_metrics_and_figures(registered_run):
    sync_api = _browser_or_skip()
    ws, export = registered_run
    run_name = export.parent.name
    data_name = f"{next((ws / 'data').glob('digits*/train')).parent.name}/train"
    shots = _shots()
    ui, url = _start_ui(ws)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(url)
            page.get_by_role("link", name=run_name).first.wait_for()
            page.get_by_text(data_name).first.wait_for()  # the dataset input (its cell loads after the row)
            page.screenshot(path=str(shots / "1-runs.png"))
            cells = page.locator("[role=gridcell]").all_inner_texts()  # the run's row
            text = "\n".join(cells)
            # Dataset: name (digest) and context of both inputs; Source; Models: the registered version
            assert re.search(rf"{re.escape(data_name)} \([0-9a-f]{{16}}\)\s+Training", text), cells
            assert re.search(rf"{re.escape(data_name[:-len('train')])}test \([0-9a-f]{{16}}\)\s+Evaluation",
                             text), cells
            assert "dsm train" in cells and re.search(r"^digits\s*\nv1$", text, re.M), cells

            page.get_by_role("link", name=run_name).first.click()
            page.get_by_role("tab", name="Model metrics").click()
            # a chart's legend (charts render as they scroll into view), and the metric sections
            page.get_by_text(re.compile(rf"^{re.escape(run_name)} \((eval|train|consistency)/")).first.wait_for()
            sections = page.inner_text("main").splitlines()
            assert {"train", "eval", "consistency"} <= set(sections), sections[:40]
            page.screenshot(path=str(shots / "2-metrics.png"))

            page.get_by_role("tab", name="Artifacts").click()
            page.get_by_text("figures", exact=True).first.click()
            page.get_by_text(re.compile(r"^denoised_\d+\.png$")).first.click()
            image = page.locator("img[src^='blob:']").first
            image.wait_for()
            page.wait_for_function("img => img.complete && img.naturalWidth > 100", arg=image.element_handle())
            page.screenshot(path=str(shots / "3-denoised-figure.png"))
            browser.close()
    finally:
        _stop(ui)
    assert all((shots / f).stat().st_size > 10_000 for f in ("1-runs.png", "2-metrics.png", "3-denoised-figure.png"))
