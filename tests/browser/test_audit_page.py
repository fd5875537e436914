"""The audit page in a real browser: Debian's headless Chromium (driven by chromedriver) against the api-server app
served over loopback, signed in with the UI's `_token` cookie. Checks the run list, a chart and a quarantined file;
that the charts' legends are whole and their run axis follows finish time; that dead URLs (`images_missing`) show;
and that the ready-to-train verdict says what it covers (a failed run never wears the green "ready" badge). Leaves
one screenshot per page in the test's temporary folder (the path is printed); with `MGDATA_DOCS_SCREENSHOTS=DIR`
(`make screenshots`) the run list and a run's page are also written there, which is where the docs' pictures of the
audit page come from.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))  # the shared run fixtures
from audit_runs import (  # noqa: E402
    DEAD_COVERS,
    QUARANTINED,
    RUN_1,
    RUN_2,
    RUN_3,
    api_server_app,
    make_failed_ready_run,
    make_runs,
)

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
    """`create_app()` (what `airflow api-server` serves) under uvicorn on loopback, reading a store of three runs."""
    import uvicorn

    store = (tmp_path_factory.mktemp("audit") / "store").as_uri()
    make_runs(store)
    make_failed_ready_run(store)
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
    assert [r.find_element(By.TAG_NAME, "a").text for r in rows] == [RUN_3, RUN_2, RUN_1]
    # Run 3 had every catalog source, so it served every recipe, each with its own verdict; run 1 served none
    served = rows[0].find_elements(By.CSS_SELECTOR, "td.recipes .badge")
    assert [b.text for b in served] == ["allava", "llava-v1.5", "mgllava", "sharegpt4v"]
    # the store is ready for MG-LLaVA but the run failed (gqa): the caveat badge, as for the run's verdict
    assert "caveat" in served[2].get_attribute("class").split() and "not ready" in served[0].get_attribute(
        "title"
    )
    assert rows[2].find_element(By.CSS_SELECTOR, "td.recipes").text == ""
    charts = browser.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert len(charts) == 2 and all(c.size["width"] > 300 and c.size["height"] > 150 for c in charts)
    bars = browser.find_elements(By.CSS_SELECTOR, "svg.chart rect")
    assert any(b.size["height"] > 20 for b in bars), "the charts draw visible columns"
    browser.save_screenshot(str(tmp_path / "audit-runs.png"))

    rows[2].find_element(By.TAG_NAME, "a").click()
    assert browser.current_url == f"{server}/mgdata-audit/runs/{quote(RUN_1, safe='')}"
    quarantine = browser.find_element(By.ID, "quarantine").text
    assert QUARANTINED in quarantine and "truncated image" in quarantine
    link = browser.find_element(By.ID, "airflow-run").get_attribute("href")
    assert link == f"{server}/dags/mgllava_data/runs/{quote(RUN_1, safe='')}"
    assert "mmc4/images" in browser.find_element(By.ID, "prefixes").text
    browser.save_screenshot(str(tmp_path / "audit-run.png"))
    print(f"screenshots: {tmp_path}/audit-runs.png, {tmp_path}/audit-run.png")
    docs = os.environ.get("MGDATA_DOCS_SCREENSHOTS")
    if docs:
        for name in ("audit-runs.png", "audit-run.png"):
            shutil.copyfile(tmp_path / name, Path(docs) / name)


@pytest.fixture
def signed_in(server, browser):
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    browser.get(f"{server}/mgdata-audit/")
    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="bob", role="viewer"))
    browser.add_cookie({"name": "_token", "value": token, "path": "/"})
    return browser


def _box(browser, element) -> dict:
    return browser.execute_script(
        "const r = arguments[0].getBoundingClientRect(); return r.toJSON();", element
    )


def _column(browser, row, header: str) -> str:
    """The text of `row`'s cell under the column headed `header` (first line of the header)."""
    from selenium.webdriver.common.by import By

    headers = [h.text.splitlines()[0] for h in browser.find_elements(By.CSS_SELECTOR, "#runs th")]
    return row.find_elements(By.TAG_NAME, "td")[headers.index(header)].text


def test_charts_show_every_source_and_order_runs_by_finish_time(server, signed_in, tmp_path):
    import json

    from selenium.webdriver.common.by import By

    from mgdata.catalog import SHIPPED_CATALOG, load_catalog

    browser = signed_in
    browser.get(f"{server}/mgdata-audit/")
    browser.save_screenshot(str(tmp_path / "audit-charts.png"))
    print(f"screenshot: {tmp_path}/audit-charts.png")
    store = browser.find_element(By.CSS_SELECTOR, "p.muted code").text
    from mgdata.storage import open_store

    reports = {
        r: json.loads(open_store(store).read_bytes(f"runs/{r}/report.json")) for r in (RUN_1, RUN_2, RUN_3)
    }
    by_finish = sorted(reports, key=lambda r: reports[r]["finished"])
    # The fixture: run 3 finished last, although its logical date (11-20) is earlier than run 2's (11-23).
    assert by_finish[-1] == RUN_3 and "2026-11-20" in RUN_3 and "2026-11-23" in RUN_2

    charts = browser.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert len(charts) == 2
    sources = set(load_catalog(SHIPPED_CATALOG).sources)
    for chart in charts:
        frame = _box(browser, chart)
        legend = chart.find_elements(By.CSS_SELECTOR, "text.legend")
        assert {t.text for t in legend} == sources, "every source with images has its legend entry"
        for entry in legend:
            box = _box(browser, entry)
            assert frame["top"] <= box["top"] and box["bottom"] <= frame["bottom"], f"{entry.text} is clipped"
            assert box["right"] <= frame["right"], f"{entry.text} is clipped"
        # Columns left to right in finish order, each labelled with its finish time (not its run id's date).
        labels = chart.find_elements(By.CSS_SELECTOR, "text.run-label")
        tips = [
            t.get_attribute("textContent")
            for t in chart.find_elements(By.CSS_SELECTOR, "text.run-label title")
        ]
        assert [next(r for r in reports if t.startswith(r)) for t in tips] == by_finish
        xs = [_box(browser, t)["right"] for t in labels]
        assert xs == sorted(xs)
        for label, run in zip(labels, by_finish, strict=True):
            finished = reports[run]["finished"]
            assert label.text in (
                finished[5:16].replace("T", " "),
                finished[5:19].replace("T", " "),
            )
        assert "11-20" not in labels[-1].text
        assert "finish time" in chart.find_element(By.CSS_SELECTOR, "text.axis").text


def test_dead_urls_and_the_verdicts_scope_show(server, signed_in, tmp_path):
    from selenium.webdriver.common.by import By

    browser = signed_in
    browser.get(f"{server}/mgdata-audit/")
    rows = {
        r.find_element(By.TAG_NAME, "a").text: r
        for r in browser.find_elements(By.CSS_SELECTOR, "#runs tr.run")
    }
    assert _column(browser, rows[RUN_3], "missing") == str(DEAD_COVERS)
    assert _column(browser, rows[RUN_2], "missing") == "0"
    assert "whole store" in browser.find_element(By.CSS_SELECTOR, "#runs tr").text
    # Run 3 failed over a store that is ready: said so, never in the plain green "ready" badge.
    badge = rows[RUN_3].find_element(By.CSS_SELECTOR, "td.verdict .badge")
    assert badge.text == "store ready, run failed" and "ready" not in badge.get_attribute("class").split()
    assert badge.value_of_css_property("background-color") != "rgba(220, 252, 231, 1)"
    assert "whole store" in badge.get_attribute("title") and "gqa" in badge.get_attribute("title")
    assert rows[RUN_2].find_element(By.CSS_SELECTOR, "td.verdict .badge").text == "not ready"

    rows[RUN_3].find_element(By.TAG_NAME, "a").click()
    verdict = browser.find_element(By.ID, "verdict")
    assert verdict.text == "store ready, run failed" and "caveat" in verdict.get_attribute("class")
    scope = browser.find_element(By.ID, "verdict-scope").text
    assert "whole store as of the end of this run" in scope and "This run failed (gqa)" in scope
    headers = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "#sources th")]
    ocr = next(
        r for r in browser.find_elements(By.CSS_SELECTOR, "#sources tr") if r.text.startswith("ocr_vqa")
    )
    assert ocr.find_elements(By.TAG_NAME, "td")[headers.index("missing")].text == str(DEAD_COVERS)
    assert "missing (dead URL)" in browser.find_element(By.CSS_SELECTOR, "svg.chart").text
    browser.save_screenshot(str(tmp_path / "audit-run3.png"))
    print(f"screenshot: {tmp_path}/audit-run3.png")
