"""The audit plugin through Airflow's real api-server app: mounted, listed, and closed to anyone without a valid JWT.

`airflow.api_fastapi.app.create_app()` is the app `airflow api-server` serves; the plugin is loaded from the repo's
plugins/ folder. Tokens are made by the configured auth manager (SimpleAuthManager), as the UI's login does.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import jwt
import pytest
from audit_runs import QUARANTINED, RUN_1, RUN_2, api_server_app, make_runs


@pytest.fixture(scope="module")
def store_url(tmp_path_factory) -> str:
    url = (tmp_path_factory.mktemp("audit") / "store").as_uri()
    make_runs(url)
    return url


@pytest.fixture(scope="module")
def client(store_url):
    from fastapi.testclient import TestClient

    with (
        api_server_app(store_url, "audit-test-secret") as app,
        TestClient(app, base_url="http://localhost:8080") as c,
    ):
        yield c


def token(role: str | None = "admin") -> str:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="alice", role=role))


def test_unauthenticated_requests_are_refused(client):
    assert client.get("/mgdata-audit/").status_code == 401
    assert client.get(f"/mgdata-audit/runs/{quote(RUN_1, safe='')}").status_code == 401
    browser = client.get("/mgdata-audit/", headers={"Accept": "text/html"}, follow_redirects=False)
    assert browser.status_code == 302 and "login" in browser.headers["location"]
    forged = jwt.encode({"sub": "alice", "role": "admin", "aud": "apache-airflow"}, "not-the-secret", "HS512")
    assert client.get("/mgdata-audit/", cookies={"_token": forged}).status_code == 403
    assert client.get("/mgdata-audit/", headers={"Authorization": f"Bearer {forged}"}).status_code == 403
    # a user with no role may not read the DAG's runs
    assert client.get("/mgdata-audit/", cookies={"_token": token(role=None)}).status_code == 403


def test_run_list_with_the_ui_cookie(client):
    page = client.get("/mgdata-audit/", cookies={"_token": token()})
    assert page.status_code == 200, page.text
    html = page.text
    table = html[html.index('<table id="runs">') :]
    assert table.index(RUN_2) < table.index(RUN_1), "newest run first"
    assert html.count('<tr class="run">') == 2
    assert html.count("<svg") == 2 and "Usable images per source, per run" in html
    assert "not ready" in html and "failed" in html and "success" in html
    assert f'href="runs/{quote(RUN_1, safe="")}"' in html


def test_run_page_with_a_bearer_token(client):
    headers = {"Authorization": f"Bearer {token(role='viewer')}"}
    page = client.get(f"/mgdata-audit/runs/{quote(RUN_1, safe='')}", headers=headers)
    assert page.status_code == 200, page.text
    html = page.text
    assert QUARANTINED in html and "truncated image" in html
    assert f'href="/dags/mgllava_data/runs/{quote(RUN_1, safe="")}"' in html
    assert "HTTP 503 from downloads.cs.stanford.edu" in html
    assert "mmc4/images" in html and "no catalog source provides this prefix" in html
    assert "coco/train2017/000000000404.jpg" in html
    # the trainer's contract, rule by rule: what fired, how often, the first offending ids, where the trainer does it
    assert 'id="findings"' in html and "role_invalid" in html and "user-role" in html
    assert "llava_map_fn.py:44-45 (NotImplementedError)" in html
    assert "annotations/train_json/instruct_llava_allava_doc_dvqa_share_ai2d_1383k.json" in html
    assert "+4 / −0 / ~0" in html and "Images per source" in html
    second = client.get(f"/mgdata-audit/runs/{quote(RUN_2, safe='')}", headers=headers).text
    assert f"since {RUN_1}" in second and "+0 / −0 / ~0" in second
    missing = client.get("/mgdata-audit/runs/manual__nope", headers=headers)
    assert missing.status_code == 404 and "manual__nope" in missing.text


def test_plugin_is_listed_with_its_navigation_entry(client):
    plugins = client.get("/api/v2/plugins", headers={"Authorization": f"Bearer {token()}"}).json()["plugins"]
    audit = next(p for p in plugins if p["name"] == "mgdata_audit")
    assert audit["fastapi_apps"][0]["url_prefix"] == "/mgdata-audit"
    view = audit["external_views"][0]
    assert (view["destination"], view["href"], view["category"]) == ("nav", "mgdata-audit/", "browse")


def test_reads_runs_from_s3(client, moto_endpoint, tmp_path, monkeypatch):
    from mgdata.storage import open_store, s3_client

    s3 = s3_client(
        endpoint_url=moto_endpoint,
        aws_access_key_id="AKIAAUDIT",
        aws_secret_access_key="x",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket="mgdata-audit")
    local = (tmp_path / "store").as_uri()
    make_runs(local)
    src, dst = open_store(local), open_store("s3://mgdata-audit/store", client=s3)
    for o in src.list("runs/"):
        dst.put_bytes(o.key, src.read_bytes(o.key))
    for name, value in {
        "MGDATA_STORAGE": "s3://mgdata-audit/store",
        "AWS_ENDPOINT_URL_S3": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "AKIAAUDIT",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    page = client.get("/mgdata-audit/", cookies={"_token": token()})
    assert page.status_code == 200 and "s3://mgdata-audit/store" in page.text
    assert page.text.count('<tr class="run">') == 2
    run = client.get(f"/mgdata-audit/runs/{quote(RUN_1, safe='')}", cookies={"_token": token()})
    assert QUARANTINED in run.text


def test_task_processes_load_the_plugin_without_its_web_app(tmp_path):
    """Every task process loads all plugins to find listeners: the audit plugin must not import FastAPI there."""
    root = Path(__file__).resolve().parents[2]
    probe = (
        "import sys\n"
        "from airflow.sdk.listener import get_listener_manager\n"
        "get_listener_manager()\n"
        "assert 'mgdata_audit' in sys.modules, 'the plugin was not loaded'\n"
        "print(sorted(m for m in ('fastapi', 'mgdata_audit_web.app') if m in sys.modules))\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(root / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": str(root / "include"),
    }
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
