"""`medseg ui` in a real browser: Debian's Chromium, headless, driven by Playwright.

The test store is written by medseg's own Tracker as a sweep writes it (a parent run and child runs
tagged with norm, batch_size and seed). ``make test`` installs Chromium (apt) when it is missing.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from medseg.tracking import Tracker
from tests.conftest import fresh_store

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ui_server(tmp_path):
    uri = fresh_store(tmp_path / "store.db")
    parent = Tracker(uri, "ui-test", "sweep_s1", {"medseg.sweep_id": "s1", "medseg.role": "parent"})
    dice = {}
    for norm in ("instance", "batch"):
        for bs in (1, 2):
            name = f"{norm}_bs{bs}_seed0"
            child = Tracker(uri, "ui-test", name, {"norm": norm, "batch_size": bs, "seed": 0, "medseg.sweep_id": "s1",
                                                   "medseg.role": "child", "mlflow.parentRunId": parent.run_id})
            dice[name] = round(0.5 + 0.1 * bs + (0.05 if norm == "instance" else 0), 3)
            child.log_params({"model.norm": norm, "train.batch_size": bs, "seed": 0})
            child.log_metrics({"best_val_dice_mean": dice[name]}, step=0)
            child.end()
    parent.end()
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "medseg", "ui", "--tracking-uri", uri, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        said = [proc.stdout.readline().decode(), proc.stdout.readline().decode()]  # printed before the server starts
        (landing,) = [line.split(": ", 1)[1].strip() for line in said if line.strip().startswith("ui-test: ")]
        for _ in range(120):
            try:
                urllib.request.urlopen(url + "/health", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
                time.sleep(0.5)
        else:
            pytest.fail("medseg ui did not answer within 60 s")
        yield {"url": url, "experiment_id": parent.experiment_id, "dice": dice, "landing": landing}
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        time.sleep(1)
        with pytest.raises(OSError):  # SIGTERM to `medseg ui` stopped MLflow's web server too
            urllib.request.urlopen(url + "/health", timeout=2)


def test_the_dashboard_lists_the_sweep_runs_with_norm_and_dice(ui_server, tmp_path):
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "Debian's chromium is needed: `make test` installs it (apt-get install chromium)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 2600, "height": 900})
            # the page `medseg ui` prints is the one a user lands on: it lists the runs, no click needed
            assert ui_server["landing"].startswith(f"{ui_server['url']}/#/experiments/{ui_server['experiment_id']}/runs")
            page.goto(ui_server["landing"])
            page.get_by_text("sweep_s1").wait_for(timeout=60_000)
            page.screenshot(path=str(tmp_path / "landing.png"))
            page.locator("[role=row] button").nth(1).click()  # expand the parent: its child runs
            for name in ui_server["dice"]:
                page.get_by_text(name).wait_for(timeout=20_000)
            page.get_by_role("button", name="Columns", exact=True).click()
            page.get_by_text("norm", exact=True).click()  # the tag column
            page.get_by_text("best_val_dice_mean", exact=True).click()
            page.keyboard.press("Escape")
            page.wait_for_timeout(1000)
            page.screenshot(path=str(tmp_path / "mlflow_ui.png"))
            rows = [r.inner_text() for r in page.locator("[role=row]").all()]
        finally:
            browser.close()
    assert (tmp_path / "mlflow_ui.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # ag-grid renders the pinned name column and the other columns as separate rows of one table row
    text = "\n".join(rows)
    for name, d in ui_server["dice"].items():
        assert name in text
        assert f"{d:g}" in text
    cells = [c.strip() for r in rows for c in r.split("\n")]
    assert cells.count("instance") == 2 and cells.count("batch") == 2  # the norm column
