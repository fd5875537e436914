"""The production deployment, for real: Airflow on PostgreSQL with CeleryExecutor and Redis, two Celery workers, the
store on S3, driven only through the REST API, the way a user drives it from the UI.

No Docker: `processes.Deployment` starts `airflow api-server`, `scheduler`, `dag-processor`, `triggerer` and two
`celery worker`s on this machine with the settings docker-compose.yaml uses (`deployment_env`), a throwaway database
on the local PostgreSQL and its own key prefix on the local Redis. The store is moto's S3 server on loopback, reached
through the `mgdata_s3` Airflow connection; the upstream is the sample mirror, served from this process so the test
can take a source's file away and bring it back.

The story: a run over two sources succeeds; the next one (forced re-fetch) loses AI2D's mirror, so the run fails while
TextVQA is still assembled; the mirror comes back, the AI2D task group and everything downstream are cleared through
`clearTaskInstances`, and the same run ends in success. Both workers ran tasks. Everything started is ended, the
database dropped and the Redis keys deleted, also when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
from deployment_env import BUCKET, STORAGE
from processes import Deployment, MissingPrerequisite, Services

from mgdata.storage import open_store, s3_client
from offline_mirror.build import build_mirror, write_catalog
from offline_mirror.server import MirrorServer

pytestmark = pytest.mark.timeout(1200)
DAG = "mgllava_data"
SOURCES = ["ai2d", "textvqa"]
BROKEN = "ai2d"  # the source whose mirror goes down in the second run
S3_LOGIN, S3_SECRET = "AKIADEPLOYMENT", "deployment-s3-secret-never-logged"
RUN_TIMEOUT = 600


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    root = tmp_path_factory.mktemp("mirror")
    replicas = build_mirror(root, images_per_source=40, sources=SOURCES)
    server = MirrorServer(root).start()
    # Small shards, so each archive is extracted by several mapped instances spread over the workers.
    catalog = write_catalog(root, server.base_url, replicas, shard_bytes=1024 * 1024)
    yield SimpleNamespace(root=root, server=server, catalog=catalog, replicas={r.source: r for r in replicas})
    server.stop()


@pytest.fixture(scope="module")
def s3():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = s3_client(
        endpoint_url=endpoint,
        aws_access_key_id=S3_LOGIN,
        aws_secret_access_key=S3_SECRET,
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    yield SimpleNamespace(endpoint=endpoint, store=open_store(STORAGE, client=client))
    server.stop()


@pytest.fixture
def deployment(tmp_path, mirror, s3):
    services = Services.from_env()
    try:
        services.check()
    except MissingPrerequisite as e:
        pytest.fail(f"the deployment test's prerequisites (docs/development.md): {e}", pytrace=False)
    d = Deployment(
        tmp_path,
        catalog=mirror.catalog,
        s3_endpoint=s3.endpoint,
        s3_login=S3_LOGIN,
        s3_password=S3_SECRET,
        services=services,
    )
    try:
        with tails_on_failure(d):
            d.setup()
            d.start()
        yield d
    finally:
        d.stop()
    assert not d.stragglers(), "processes of the deployment outlived stop()"
    assert not d.database_exists(), f"database {d.database} was not dropped"
    assert not d.redis_keys(), f"Redis keys under {d.key_prefix} were left behind"


@contextlib.contextmanager
def tails_on_failure(d: Deployment):
    try:
        yield
    except BaseException:
        print(d.tails())  # pytest shows captured output of a failed test
        raise


def test_celery_deployment_runs_fails_and_recovers_through_the_rest_api(deployment, mirror, s3):
    d = deployment
    with tails_on_failure(d):
        began = time.monotonic()
        wait_for_dag(d)
        d.api("PATCH", f"dags/{DAG}", json={"is_paused": False})

        # 1. A run over two sources, triggered through the REST API, succeeds on S3.
        first = trigger(d, "deployment-first", {"sources": SOURCES})
        assert wait_for_run(d, first) == "success"
        report = read_report(s3.store, first)
        assert report["status"] == "success" and report["store"] == STORAGE
        for name in SOURCES:
            s, replica = report["sources"][name], mirror.replicas[name]
            assert s["status"] == "ok", (name, s["error"])
            assert (s["files_fetched"], s["bytes_fetched"]) == (1, replica.size), name
            assert s["images_ok"] + s["images_normalized"] == replica.images, name
            assert s["images_invalid"] == replica.broken, name
        assert {o.key.split("/")[1] for o in s3.store.list("manifests/") if "/parts/" not in o.key} == {
            f"{n}.parquet" for n in SOURCES
        }

        # 2. AI2D's mirror goes down during a forced refresh: the run fails, TextVQA is still assembled.
        archive = mirror.root / mirror.replicas[BROKEN].relpath
        hidden = archive.with_name(archive.name + ".down")
        archive.rename(hidden)
        try:
            second = trigger(d, "deployment-second", {"sources": SOURCES, "force": True})
            assert wait_for_run(d, second) == "failed"
        finally:
            hidden.rename(archive)
        report = read_report(s3.store, second)
        assert report["status"] == "failed" and report["failed_sources"] == [BROKEN]
        assert report["sources"]["textvqa"]["status"] == "ok"
        assert report["sources"]["textvqa"]["files_fetched"] == 1
        assert BROKEN in report["sources"][BROKEN]["error"]
        assert mirror.replicas[BROKEN].name in report["sources"][BROKEN]["error"]
        states = task_states(d, second)
        assert states[f"{BROKEN}.fetch"] == {"failed"}
        assert states["assemble"] == {"success"} and states["check_sources"] == {"failed"}
        assert states["textvqa.finalize"] == {"success"}

        # 3. The mirror is back: clear the failed task group and everything downstream, as from the UI.
        group = [
            t["task_id"]
            for t in d.api("GET", f"dags/{DAG}/tasks")["tasks"]
            if t["task_id"].startswith(f"{BROKEN}.")
        ]
        cleared = d.api(
            "POST",
            f"dags/{DAG}/clearTaskInstances",
            json={
                "dry_run": False,
                "dag_run_id": second,
                "task_ids": group,
                "only_failed": False,
                "include_downstream": True,
                "reset_dag_runs": True,
            },
        )
        cleared_ids = {ti["task_id"] for ti in cleared["task_instances"]}
        assert set(group) | {"assemble", "check_sources"} <= cleared_ids
        assert not any(t.startswith("textvqa.") for t in cleared_ids)
        assert d.api("GET", f"dags/{DAG}/dagRuns/{second}")["state"] in ("queued", "running")
        assert wait_for_run(d, second) == "success"
        report = read_report(s3.store, second)
        assert report["status"] == "success" and report["failed_sources"] == []
        assert report["sources"][BROKEN]["status"] == "ok"
        assert report["sources"][BROKEN]["images_ok"] + report["sources"][BROKEN]["images_normalized"] == (
            mirror.replicas[BROKEN].images
        )

        # 4. Both Celery workers ran tasks; no secret reached a log.
        instances = task_instances(d, first) + task_instances(d, second)
        ran_on = defaultdict(int)
        for ti in instances:
            if ti["state"] == "success" and ti["hostname"]:
                ran_on[ti["hostname"]] += 1
        assert set(d.workers) <= set(ran_on), f"tasks per worker: {dict(ran_on)}"
        leaked = [p for p in d.workdir.rglob("*.log") if S3_SECRET in p.read_text(errors="replace")]
        assert not leaked, f"the S3 secret appears in {leaked}"

        print_figures(d, {"first": first, "second": second}, ran_on, time.monotonic() - began)


# --------------------------------------------------------------------------------------------------
# REST API steps


def wait_for_dag(d: Deployment, timeout: float = 180) -> None:
    """The dag-processor has parsed and serialized the DAG (else fail with its import errors)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d.check_alive()
        if any(dag["dag_id"] == DAG for dag in d.api("GET", "dags", params={"dag_id_pattern": DAG})["dags"]):
            return
        time.sleep(2)
    raise AssertionError(f"{DAG} not parsed: {d.api('GET', 'importErrors')}")


def trigger(d: Deployment, run_id: str, conf: dict) -> str:
    run = d.api(
        "POST", f"dags/{DAG}/dagRuns", json={"dag_run_id": run_id, "logical_date": None, "conf": conf}
    )
    return run["dag_run_id"]


def wait_for_run(d: Deployment, run_id: str, timeout: float = RUN_TIMEOUT) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d.check_alive()
        state = d.api("GET", f"dags/{DAG}/dagRuns/{run_id}")["state"]
        if state in ("success", "failed"):
            return state
        time.sleep(2)
    raise AssertionError(f"run {run_id} not finished in {timeout} s: {summarize(task_instances(d, run_id))}")


def task_instances(d: Deployment, run_id: str) -> list[dict]:
    """Every task instance of a run, mapped ones included (the API pages by 100)."""
    out: list[dict] = []
    while True:
        page = d.api(
            "GET", f"dags/{DAG}/dagRuns/{run_id}/taskInstances", params={"limit": 100, "offset": len(out)}
        )
        out += page["task_instances"]
        if not page["task_instances"] or len(out) >= page["total_entries"]:
            return out


def task_states(d: Deployment, run_id: str) -> dict[str, set[str]]:
    states: dict[str, set[str]] = defaultdict(set)
    for ti in task_instances(d, run_id):
        states[ti["task_id"]].add(ti["state"])
    return states


def summarize(instances: list[dict]) -> str:
    return ", ".join(
        f"{ti['task_id']}[{ti['map_index']}]={ti['state']}" for ti in instances if ti["state"] != "skipped"
    )


def read_report(store, run_id: str) -> dict:
    return json.loads(store.read_bytes(f"runs/{run_id}/report.json"))


def print_figures(d: Deployment, runs: dict[str, str], ran_on: dict[str, int], wall: float) -> None:
    """Per-task durations from the REST API (the cluster page's per-task figures come from this output; run with -s)."""
    print(
        f"\ndeployment test: {wall:.0f} s from DAG parsed to the recovered run; tasks per worker {dict(ran_on)}"
    )
    for label, run_id in runs.items():
        run = d.api("GET", f"dags/{DAG}/dagRuns/{run_id}")
        print(f"run {label} ({run_id}): {run['state']}, {run['start_date']} -> {run['end_date']}")
        durations: dict[str, list[float]] = defaultdict(list)
        for ti in task_instances(d, run_id):
            if ti["state"] == "success" and ti["duration"] is not None:
                durations[ti["task_id"]].append(ti["duration"])
        for task_id, values in sorted(durations.items()):
            print(
                f"  {task_id:24} n={len(values):3}  mean {sum(values) / len(values):6.2f} s  max {max(values):6.2f} s"
            )
    print(Path(d.logs).as_posix())
