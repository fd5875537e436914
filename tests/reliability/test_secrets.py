"""Secrets: tokens in a mirror URL (userinfo and query string) and the S3 secret of an Airflow connection never reach
the logs, the error messages, the report or any object in the store. (`airflow dags test`'s own output is grepped for
the S3 secret by tests/e2e/test_dag_run.py.)"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import pytest
import yaml

from mgdata.fetch.http import FetchError
from mgdata.ingest import (
    Run,
    ingest_source,
    plan_source,
    record_failure,
)
from mgdata.report import assemble_run, verify_run
from mgdata.settings import Settings
from mgdata.storage import StoreError, s3_client

SOURCE = "ai2d"
URL_TOKEN = "urltoken-5b1e9c"  # in the query string
USER_TOKEN = "userinfo-pass-91d2"  # in user:password@
S3_SECRET = "s3-secret-key-c4a7e0"
SECRETS = (URL_TOKEN, USER_TOKEN, S3_SECRET)


def with_tokens(url: str) -> str:
    return url.replace("http://", f"http://reader:{USER_TOKEN}@", 1) + f"?token={URL_TOKEN}&sig={URL_TOKEN}"


def catalog_with(tmp_path: Path, catalog: str, mirrors: list[str]) -> str:
    raw = yaml.safe_load(Path(catalog).read_text())
    raw["sources"][SOURCE]["files"][0]["mirrors"] = mirrors
    out = tmp_path / "catalog.yaml"
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(out)


def run_source(run: Run) -> list[str]:
    """The DAG's path for one source, a failure recorded the way its tasks record one; returns the error messages."""
    errors = []
    try:
        ingest_source(run, SOURCE)
    except (FetchError, StoreError) as e:
        errors.append(str(e))
        record_failure(run, SOURCE, "fetch", e)
    assemble_run(run, [SOURCE])
    verify_run(run)
    return errors


def assert_no_secret(store, *texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text
    for o in store.list(""):  # every object: records, reports, manifests, images
        data = store.read_bytes(o.key)
        for secret in SECRETS:
            assert secret.encode() not in data, f"{secret} in {o.key}"


@pytest.fixture
def s3_settings(moto_endpoint, monkeypatch):
    """An S3 store through an Airflow AWS connection whose secret key is S3_SECRET (as a deployment configures)."""
    bucket = f"secrets-{uuid.uuid4().hex[:12]}"
    conn = {
        "conn_type": "aws", "login": "AKIASECRETTEST", "password": S3_SECRET,
        "extra": {"endpoint_url": moto_endpoint, "region_name": "us-east-1"},
    }  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_MGDATA_S3", json.dumps(conn))
    s3_client(
        endpoint_url=moto_endpoint, aws_access_key_id="x", aws_secret_access_key="x", region_name="us-east-1"
    ).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/store", "mgdata_s3"


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_tokens_never_leave_the_process(mirror, tmp_path, caplog, backend, request):
    srv, catalog, replica = mirror
    if backend == "local":
        storage, conn_id = (tmp_path / "store").as_uri(), None
    else:
        storage, conn_id = request.getfixturevalue("s3_settings")
    good = catalog_with(
        tmp_path, catalog, [with_tokens(srv.url("dead/ai2d-all.zip")), with_tokens(srv.url(replica.relpath))]
    )
    caplog.set_level(logging.DEBUG)

    run = Run(Settings(storage=storage, catalog=good, s3_conn_id=conn_id), "ok-run")
    assert run_source(run) == []  # the second mirror delivered, after the first failed
    report = run.store.read_bytes("runs/ok-run/report.json").decode()
    assert json.loads(report)["sources"][SOURCE]["status"] == "ok"

    bad = catalog_with(
        tmp_path,
        catalog,
        [with_tokens(srv.url("dead/ai2d-all.zip")), with_tokens(srv.url("gone/ai2d-all.zip"))],
    )
    failed = Run(Settings(storage=storage, catalog=bad, s3_conn_id=conn_id), "failed-run", force=True)
    errors = run_source(failed)
    assert (
        len(errors) == 1
        and "all 2 mirrors failed" in errors[0]
        and "/gone/ai2d-all.zip: HTTP 404" in errors[0]
    )
    report = failed.store.read_bytes("runs/failed-run/report.json").decode()
    assert "/gone/ai2d-all.zip: HTTP 404" in report  # the report says why, by URL

    assert_no_secret(run.store, caplog.text, *errors)


def test_store_errors_do_not_show_the_s3_secret(s3_settings, mirror, caplog):
    storage, conn_id = s3_settings
    _, catalog, _ = mirror
    missing = storage.replace("s3://secrets-", "s3://missing-")
    run = Run(Settings(storage=missing, catalog=catalog, s3_conn_id=conn_id), "r")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StoreError) as err:
        plan_source(run, SOURCE)
    assert missing.split("/")[2] in str(err.value) and "NoSuchBucket" in str(err.value)
    for text in (str(err.value), repr(err.value.__cause__), caplog.text):
        assert S3_SECRET not in text
