"""Real-browser test of the app: ``diffaudit app`` as a subprocess on a free port, every page loaded in
headless Debian Chromium through Playwright; no Streamlit error box may show; screenshots are saved
(pytest's tmp dir and test-artifacts/app/, which git ignores)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_app import build_results

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "app"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"{CHROMIUM} is absent: install Debian's chromium (apt-get install chromium; .ci/run does)",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    results = build_results(tmp_path_factory)
    # a second root: the tiny sweep with a censored n1* interval (upper end at n = 1e21, as an expanded
    # bootstrap interval can be); its name sorts first, so the Scaling page opens on it
    censored = tmp_path_factory.mktemp("censored")
    sweep = censored / "sweeps" / "a-tiny"  # listed as "sweeps/a-tiny  (in ...)", before "sweeps/tiny"
    shutil.copytree(results / "sweeps" / "tiny", sweep)
    thr = json.loads((sweep / "thresholds.json").read_text())
    for g in thr["groups"]:
        g["n1_star"].update(status="fit", n_star=50.0, n_star_ci=[40.0, 1e21])
    (sweep / "thresholds.json").write_text(json.dumps(thr))
    port = _free_port()
    log = tmp_path_factory.mktemp("app-log") / "app.log"
    env = {**os.environ, "DIFFAUDIT_CACHE_DIR": str(tmp_path_factory.mktemp("app-browser-cache"))}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "diffaudit",
                "app",
                "--results",
                str(results),
                "--results",
                str(censored),
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"diffaudit app did not start (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    # `diffaudit app` becomes the server (exec): stopping it leaves no orphaned Streamlit behind
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)


# (screenshot name, URL path, text that must appear, plotly charts the page draws)
PAGES = [
    ("home", "", "diffaudit", 0),
    ("overview", "Overview", "Overview", 0),
    ("audit-vector", "Audit?run=0%3Aaudits%2Fmemorizer-hm", "control:memorizer on hidden-manifold", 6),
    ("audit-image", "Audit?run=0%3Aaudits%2Fmemorizer-sprites", "control:memorizer on sprites", 5),
    ("scaling", "Scaling", "Phase diagram", 3),
    (
        "compare",
        "Compare?runs=0%3Aaudits%2Fmemorizer-hm&runs=0%3Aaudits%2Fmemorizer-sprites",
        "Overlaid curves",
        4,
    ),
]


def test_every_page_renders_in_chromium(app_url, tmp_path):
    from playwright.sync_api import sync_playwright

    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 4400})
            for name, path, expected, n_charts in PAGES:
                page.goto(f"{app_url}/{path}", wait_until="domcontentloaded")
                page.wait_for_selector('[data-testid="stApp"]', timeout=60_000)
                page.get_by_text(expected).first.wait_for(timeout=60_000)
                # the script has finished once the "running" status widget is gone
                page.wait_for_function(
                    "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=60_000
                )
                page.locator("[data-testid='stDataFrame']").first.wait_for(timeout=60_000)
                # plotly is a lazily loaded component: wait until every chart has drawn its SVG
                page.wait_for_function(
                    "(n) => document.querySelectorAll('.js-plotly-plot .main-svg').length >= 2 * n",
                    arg=n_charts,
                    timeout=60_000,
                )
                page.wait_for_timeout(1000)  # let the data grid paint
                page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
                assert page.locator('[data-testid="stException"]').count() == 0, f"error box on page {name}"
                assert "Refused" not in page.inner_text("body")
        finally:
            browser.close()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for f in shots.iterdir():
        shutil.copy(f, ARTIFACTS / f.name)
    assert sorted(f.name for f in shots.iterdir()) == sorted(f"{p[0]}.png" for p in PAGES)


def test_traversal_in_the_url_is_refused_in_the_browser(app_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
        )
        try:
            page = browser.new_page()
            page.goto(f"{app_url}/Audit?run=0%3A..%2F..%2F..%2Fetc", wait_until="domcontentloaded")
            page.get_by_text("Refused:").first.wait_for(timeout=60_000)
            assert page.locator('[data-testid="stException"]').count() == 0
            assert "root:x:" not in page.inner_text("body")
        finally:
            browser.close()


def test_scaling_axis_covers_the_measured_n_in_chromium(app_url):
    """The first Scaling chart (metric against n, log axis) as plotly laid it out in the page, on the sweep
    whose n1* interval runs to n = 1e21: its x range covers the n grid (32..128) and stays within a factor
    1.5 of it at either end; the interval beyond the grid is marked with an arrow."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 3000})
            page.goto(f"{app_url}/Scaling", wait_until="domcontentloaded")
            page.get_by_text("Phase diagram").first.wait_for(timeout=60_000)
            page.wait_for_function(
                "() => { const g = document.querySelector('.js-plotly-plot');"
                " return g && g._fullLayout && g._fullLayout.xaxis; }",
                timeout=60_000,
            )
            axis = page.evaluate(
                "() => { const g = document.querySelector('.js-plotly-plot');"
                " const a = g._fullLayout.xaxis;"
                " return {type: a.type, range: a.range,"
                " notes: (g._fullLayout.annotations || []).map(n => n.text)}; }"
            )
        finally:
            browser.close()
    assert axis["type"] == "log"
    lo, hi = (10**v for v in axis["range"])
    assert lo <= 32 and hi >= 128
    assert 32 / lo < 1.5 and hi / 128 < 1.5
    assert any("interval to 1e+21 →" in t for t in axis["notes"]), axis["notes"]
