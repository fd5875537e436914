"""The audit page in a real browser: Debian's headless Chromium (driven by chromedriver) against the api-server app
served over loopback, signed in with the UI's `_token` cookie. Checks the run list, a chart and a quarantined file,
and leaves one screenshot per page in the test's temporary folder (the path is printed).
"""

from __future__ import annotations

import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))  # the shared run fixtures
from audit_runs import QUARANTINED, RUN_1, RUN_2, api_server_app, make_runs  # noqa: E402

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1100",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`create_app()` (what `airflow api-server` serves) under uvicorn on loopback, reading a store of two runs."""
    import uvicorn

    store = (tmp_path_factory.mktemp("audit") / "store").as_uri()
    make_runs(store)
    with api_server_app(store, "audit-browser-secret") as app:
        port = _free_port()
        uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=uv.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not uv.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the api-server app did not start"
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
        uv.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "needs Debian's chromium and chromium-driver (`make test` installs them)"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    b = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    yield b
    b.quit()


def test_audit_page_in_chromium(server, browser, tmp_path):
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from selenium.webdriver.common.by import By

    # Without a session the page is not shown: the browser lands on Airflow's login.
    browser.get(f"{server}/mgdata-audit/")
    assert "/mgdata-audit/" not in browser.current_url and "login" in browser.current_url

    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="alice", role="viewer"))
    browser.add_cookie({"name": "_token", "value": token, "path": "/"})
    browser.get(f"{server}/mgdata-audit/")
    rows = browser.find_elements(By.CSS_SELECTOR, "#runs tr.run")
    assert [r.find_element(By.TAG_NAME, "a").text for r in rows] == [RUN_2, RUN_1]
    charts = browser.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert len(charts) == 2 and all(c.size["width"] > 300 and c.size["height"] > 150 for c in charts)
    bars = browser.find_elements(By.CSS_SELECTOR, "svg.chart rect")
    assert any(b.size["height"] > 20 for b in bars), "the charts draw visible columns"
    browser.save_screenshot(str(tmp_path / "audit-runs.png"))

    rows[1].find_element(By.TAG_NAME, "a").click()
    assert browser.current_url == f"{server}/mgdata-audit/runs/{quote(RUN_1, safe='')}"
    quarantine = browser.find_element(By.ID, "quarantine").text
    assert QUARANTINED in quarantine and "truncated image" in quarantine
    link = browser.find_element(By.ID, "airflow-run").get_attribute("href")
    assert link == f"{server}/dags/mgllava_data/runs/{quote(RUN_1, safe='')}"
    assert "sam/images" in browser.find_element(By.ID, "prefixes").text
    browser.save_screenshot(str(tmp_path / "audit-run.png"))
    print(f"screenshots: {tmp_path}/audit-runs.png, {tmp_path}/audit-run.png")
