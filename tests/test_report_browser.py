"""The report and ``sleuth serve`` in a real browser: Debian's headless Chromium, driven
through its chromedriver by selenium (nothing is downloaded).

Without Chromium these tests skip — except where ``SLEUTH_REQUIRE_BROWSER=1`` (set by
``make test`` and ``.ci/run``, which install Debian's ``chromium`` and ``chromium-driver``),
where a missing browser fails them: in CI they run, never skip.

Screenshots are saved under ``test-artifacts/`` at the repository root.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        if os.environ.get("SLEUTH_REQUIRE_BROWSER") == "1":
            pytest.fail(f"no Chromium at {CHROMIUM} / {CHROMEDRIVER}: apt-get install chromium chromium-driver")
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--window-size=1280,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _errors(driver) -> list[dict]:
    """Console messages at error level since the last call (CSP violations and failed loads included)."""
    return [m for m in driver.get_log("browser") if m["level"] in ("SEVERE", "ERROR")]


def _figure_sizes(driver) -> list[dict]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('figure svg')).map(s => {"
        " const r = s.getBoundingClientRect();"
        " return {id: s.closest('figure').id, width: r.width, height: r.height,"
        "         shapes: s.querySelectorAll('rect, path, polyline, circle, text').length}; });")


def _screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(max(int(height), 1000), 16000))
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    driver.set_window_size(1280, 1000)
    return path


def test_the_ioi_report_opens_offline_with_every_figure_drawn(browser, ioi_report):
    out, _ = ioi_report
    _errors(browser)
    browser.get(Path(out["report"]["html"]).resolve().as_uri())
    assert "indirect object identification" in browser.title
    sizes = _figure_sizes(browser)
    assert {s["id"] for s in sizes} == {f"figure-{name}" for name in (
        "mechanism", "resid", "heads", "lens", "attention", "steering", "faithfulness")}
    for s in sizes:
        assert s["width"] > 50 and s["height"] > 50 and s["shapes"] > 5, s
    assert _errors(browser) == []
    first = browser.execute_script("return document.querySelector('#answer').getBoundingClientRect().top")
    assert first < 400  # the answer is on the first screen
    path = _screenshot(browser, "report-ioi.png")
    assert path.stat().st_size > 10_000


def test_planted_payloads_do_not_run_in_the_browser(browser, ioi_report, tmp_path, capsys):
    from agents.cli import main as sleuth
    from tests.test_report import _plant_payloads, copy_workspace

    out, workspace = ioi_report
    workspace = copy_workspace(workspace, tmp_path / "ws")
    _plant_payloads(workspace, out["run_id"])
    assert sleuth(["report", out["run_id"], "--workspace", str(workspace), "--format", "html"]) == 0
    page = tmp_path / "payload.html"
    page.write_text(capsys.readouterr().out)
    _errors(browser)
    browser.get(page.as_uri())
    assert browser.execute_script("return window.__pwned === undefined")
    assert browser.execute_script("return document.querySelectorAll('script, img, iframe').length") == 0
    assert browser.execute_script(
        "return Array.from(document.querySelectorAll('a')).filter(a => a.protocol === 'javascript:').length") == 0
    assert "<script>window.__pwned=1</script>" in browser.find_element("tag name", "h1").text
    assert _errors(browser) == []
    _screenshot(browser, "report-payloads.png")


def _request(url: str, method: str = "GET", host: str | None = None) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(url, method=method)
    if host:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def _row(driver, run_id: str) -> str | None:
    """The text of a run's row, read in one step (the page rebuilds its rows every 2 s)."""
    return driver.execute_script(
        "const r = document.querySelector(`tr[data-run=\"${arguments[0]}\"]`); "
        "return r ? r.textContent.replace(/\\s+/g, ' ') : null;", run_id)


def _wait_for(predicate, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.25)
    return predicate()


def test_serve_lists_runs_live_and_serves_their_reports_read_only(browser, ioi_report, tmp_path):
    from agents.report.render import write_reports
    from agents.serve import start_server
    from memory.runstore import RunStore
    from memory.workspace import Workspace
    from tests.test_report import copy_workspace

    out, workspace = ioi_report
    workspace = copy_workspace(workspace, tmp_path / "ws")
    server, _ = start_server(str(workspace))
    try:
        _errors(browser)
        browser.get(server.url)
        assert "answered" in _row(browser, out["run_id"])
        # a run that is going on: its status changes on disk, and the open page follows
        with Workspace.open(workspace, writer=True) as ws:
            live = RunStore(ws).create("is it live?", "organism-default", weights_hash="0" * 64)
            live.update(status="running")
            assert _wait_for(lambda: "running" in (_row(browser, live.id) or "")), _row(browser, live.id)
            live.update(status="answered", cost={"experiments": 7})
            assert _wait_for(lambda: "answered" in (_row(browser, live.id) or "")), _row(browser, live.id)
        assert "live; refreshed" in browser.find_element("id", "refreshed").text
        assert _errors(browser) == []
        _screenshot(browser, "serve-runs.png")
        # the report of the finished run, served (rebuilt from the stored results)
        browser.execute_script("document.querySelector(`tr[data-run=\"${arguments[0]}\"] a`).click()", out["run_id"])
        assert _wait_for(lambda: browser.current_url.endswith("/reports/report.html"))
        assert "/runs/" in browser.current_url and browser.current_url.endswith("/reports/report.html")
        sizes = _figure_sizes(browser)
        assert len(sizes) == 7 and all(s["width"] > 50 and s["height"] > 50 for s in sizes)
        evidence = browser.find_element("css selector", "a.key").get_attribute("href")
        status, body, _ = _request(evidence)
        assert status == 200 and json.loads(body)["spec"]["kind"]
        assert _errors(browser) == []
        _screenshot(browser, "serve-report.png")
        # read-only, and only for this machine's own pages
        base = server.url.rstrip("/")
        assert _request(f"{base}/api/runs", method="POST")[0] == 405
        assert _request(f"{base}/api/runs", method="DELETE")[0] == 405
        assert _request(f"{base}/runs/..%2F..%2Fetc/reports/report.html")[0] == 404
        assert _request(f"{base}/runs/{out['run_id']}/../../workspace.json")[0] == 404
        assert _request(f"{base}/api/runs", host="evil.example:80")[0] == 403
        status, body, headers = _request(f"{base}/runs/{out['run_id']}/reports/report.html")
        assert status == 200 and "script-src 'none'" in headers["Content-Security-Policy"]
        assert _request(f"{base}/runs/no-such-run/reports/report.html")[0] == 404
        with Workspace.open(workspace, writer=True) as ws:
            write_reports(RunStore(ws).open(out["run_id"]))
        status, body, headers = _request(f"{base}/runs/{out['run_id']}/reports/figures/lens.svg")
        assert status == 200 and headers["Content-Type"] == "image/svg+xml" and b"<svg" in body
    finally:
        server.shutdown()
        server.server_close()
    assert server.server_address[0] == "127.0.0.1"
