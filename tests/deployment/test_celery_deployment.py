"""The production deployment, for real: Airflow on PostgreSQL with CeleryExecutor and Redis, two Celery workers, the
store on S3, driven only through the REST API, the way a user drives it from the UI.

No Docker: `processes.Deployment` starts `airflow api-server`, `scheduler`, `dag-processor`, `triggerer` and two
`celery worker`s on this machine with the settings docker-compose.yaml uses (`deployment_env`), a throwaway database
on the local PostgreSQL and its own key prefix on the local Redis. The store is `moto_server` in its own process on
loopback, behind a counting proxy (`s3_counter`) that the `mgdata_s3` Airflow connection points at, so every S3
request of the deployment is counted by verb at the server side; the upstream is the sample mirror, served from this
process so the test can take a source's file away and bring it back.

The story: a run over two sources succeeds; an unchanged refresh (not forced) succeeds without writing data, in a
number of S3 requests bounded per source; a forced refresh loses AI2D's mirror, so the run fails while TextVQA is
still assembled; the mirror comes back, the AI2D task group and everything downstream are cleared through
`clearTaskInstances`, and while AI2D extracts, the worker running an `extract` is SIGKILLed with its task processes
and started again a few seconds later: the same run ends in success with no further action (the scheduler's heartbeat
timeout fails the cut-off tries, the tasks' retries run them again), and `python -m mgdata check` finds the store's
invariant intact (manifests = objects, no orphan, no open multipart upload). Both workers ran tasks. S3 requests per
image member, per phase, are printed (`pytest -s`). Everything started is ended, the database dropped and the Redis
keys deleted, also when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from deployment_env import BUCKET, STORAGE
from processes import (
    DAG,
    Deployment,
    MissingPrerequisite,
    Services,
    free_port,
    task_instances,
    trigger,
    wait_for_dag,
    wait_for_run,
)
from s3_counter import Counts, Phases, S3Counter, moto_server

from mgdata.catalog import load_catalog
from mgdata.storage import open_store, s3_client
from offline_mirror.build import build_mirror, write_catalog
from offline_mirror.server import MirrorServer

pytestmark = pytest.mark.timeout(1200)
SOURCES = ["ai2d", "textvqa"]
BROKEN = "ai2d"  # the source whose mirror goes down in the second run
S3_LOGIN, S3_SECRET = "AKIADEPLOYMENT", "deployment-s3-secret-never-logged"
RUN_TIMEOUT = 600
STORE_PREFIX = STORAGE.removeprefix(f"s3://{BUCKET}/")
KILLED_FOR = 5  # seconds the killed worker stays down


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
    """moto_server in its own process, behind the counting proxy the deployment's connection points at. The test's
    own client talks to moto directly, so the counts are the deployment's requests alone."""
    port = free_port()
    server = moto_server(port)
    direct = f"http://127.0.0.1:{port}"
    counter = S3Counter(direct, area_prefix=f"/{BUCKET}/{STORE_PREFIX}/", server_pid=server.pid).start()
    client = s3_client(
        endpoint_url=direct,
        aws_access_key_id=S3_LOGIN,
        aws_secret_access_key=S3_SECRET,
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    try:
        yield SimpleNamespace(
            endpoint=counter.endpoint,
            counter=counter,
            client=client,
            store=open_store(STORAGE, client=client),
        )
    finally:
        counter.stop()
        server.terminate()
        server.wait()


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
    phases = Phases(s3.counter)
    with tails_on_failure(d):
        began = time.monotonic()
        wait_for_dag(d)
        d.api("PATCH", f"dags/{DAG}", json={"is_paused": False})

        # 1. A run over two sources, triggered through the REST API, succeeds on S3.
        with phases.measure("first run"):
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
        assert phases["first run"].written["data"] == sum(r.images for r in mirror.replicas.values())

        # 2. An unchanged refresh (not forced) succeeds without writing data, at a cost per source, not per image.
        with phases.measure("unchanged refresh"):
            refresh = trigger(d, "deployment-refresh", {"sources": SOURCES})
            assert wait_for_run(d, refresh) == "success"
        states = task_states(d, refresh)
        assert all(
            states[f"{n}.plan"] == {"skipped"} and "success" not in states[f"{n}.extract"] for n in SOURCES
        )
        assert_cheap_refresh(phases["unchanged refresh"], len(load_catalog(mirror.catalog).sources))

        # 3. AI2D's mirror goes down during a forced refresh: the run fails, TextVQA is still assembled.
        archive = mirror.root / mirror.replicas[BROKEN].relpath
        hidden = archive.with_name(archive.name + ".down")
        archive.rename(hidden)
        try:
            with phases.measure("forced, AI2D down"):
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

        # 4. The mirror is back: clear the failed task group and everything downstream, as from the UI. While the
        # cleared group extracts, a worker is SIGKILLed with its task processes and comes back a few seconds later;
        # the run ends in success with nobody's help (heartbeat timeout, then the task's retry).
        with phases.measure("cleared, worker killed"):
            cleared_ids = clear_source(d, second, BROKEN)
            assert set(cleared_ids) >= {"assemble", "check_sources"}
            assert not any(t.startswith("textvqa.") for t in cleared_ids)
            assert d.api("GET", f"dags/{DAG}/dagRuns/{second}")["state"] in ("queued", "running")
            killed, victims = kill_worker_during(d, second, f"{BROKEN}.extract")
            assert wait_for_run(d, second) == "success"
        report = read_report(s3.store, second)
        assert report["status"] == "success" and report["failed_sources"] == []
        assert report["sources"][BROKEN]["status"] == "ok"
        assert report["sources"][BROKEN]["images_ok"] + report["sources"][BROKEN]["images_normalized"] == (
            mirror.replicas[BROKEN].images
        )
        after = {(ti["task_id"], ti["map_index"]): ti for ti in task_instances(d, second)}
        for ti in victims:  # each instance the kill cut off ran again (a later try) and succeeded
            again = after[(ti["task_id"], ti["map_index"])]
            assert again["state"] == "success" and again["try_number"] > ti["try_number"], (killed, again)
            print(
                f"killed worker {killed} during {ti['task_id']}[{ti['map_index']}] try {ti['try_number']}: "
                f"try {again['try_number']} succeeded on {again['hostname']}, ended {again['end_date']}"
            )

        # 5. The store's invariant holds after the kill: manifests = objects, no orphan, no open multipart upload.
        with phases.measure("mgdata check"):
            checked = d.run("mgdata-check", [sys.executable, "-m", "mgdata", "check"])
        assert f"{STORAGE}: the invariant holds" in checked, checked
        for name in SOURCES:
            usable = mirror.replicas[name].images
            assert re.search(rf"^{name}\s.*\b{usable:,} usable\s+{usable:,} objects", checked, re.M), checked
        assert s3.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []

        # 6. Both Celery workers ran tasks; no secret reached a log.
        instances = task_instances(d, first) + task_instances(d, second)
        ran_on = defaultdict(int)
        for ti in instances:
            if ti["state"] == "success" and ti["hostname"]:
                ran_on[ti["hostname"]] += 1
        assert set(d.workers) <= set(ran_on), f"tasks per worker: {dict(ran_on)}"
        leaked = [p for p in d.workdir.rglob("*.log") if S3_SECRET in p.read_text(errors="replace")]
        assert not leaked, f"the S3 secret appears in {leaked}"

        print_figures(
            d, {"first": first, "refresh": refresh, "second": second}, ran_on, time.monotonic() - began
        )
        print(phases.table(sum(r.images + r.broken for r in mirror.replicas.values())))
        print(
            "unchanged refresh, requests by verb and area:", sorted(phases["unchanged refresh"].areas.items())
        )


# --------------------------------------------------------------------------------------------------
# S3 requests per phase


# An unchanged refresh's request budget (measured: 47 for 2 of the catalog's 17 sources, see docs/cluster.md). Per
# selected source (measured 8): plan reads the file state and stats the raw copy and the manifest, then finalizes
# from the journal and the state (no manifest read: the state's counts; the summary goes to assemble as XCom);
# assemble reads the manifest; verify reads it and the skip record. Per catalog source (1): verify reads its
# manifest. Per run (14): the report, written by assemble and again by verify, one listing of state/ for every skip
# record, one per folder of training JSONs. Nothing per image: one request more per image member (86 here) would
# break it.
REFRESH_REQUESTS_PER_SOURCE = 9
REFRESH_REQUESTS_PER_CATALOG_SOURCE = 1
REFRESH_REQUESTS_PER_RUN = 16
REPORT_WRITES = 4  # report.json and report.html, by assemble and again by verify with the verdict


def assert_cheap_refresh(c: Counts, catalog_sources: int) -> None:
    """No data, no state and no per-source record written (no PutObject but the run's report, no multipart
    upload, no copy, no delete), and a number of requests bounded by the sources, whatever their image count."""
    assert c.multipart == 0 and c.verbs["COPY"] == 0 and c.verbs["DELETE"] == 0, dict(c.verbs)
    assert dict(c.written) == {"runs": REPORT_WRITES}, (
        f"an unchanged refresh wrote more than its run's report: {dict(c.written)}"
    )
    budget = (
        REFRESH_REQUESTS_PER_SOURCE * len(SOURCES)
        + REFRESH_REQUESTS_PER_CATALOG_SOURCE * catalog_sources
        + REFRESH_REQUESTS_PER_RUN
    )
    assert c.requests <= budget, f"{c.requests} requests (budget {budget}): {dict(c.areas)}"


# --------------------------------------------------------------------------------------------------
# The worker kill


def kill_worker_during(d: Deployment, run_id: str, task_id: str, timeout: float = RUN_TIMEOUT):
    """Once an instance of `task_id` runs, SIGKILL the worker running it (with its pool and task processes) and
    start it again KILLED_FOR seconds later. Returns the worker's name and the instances it was running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [ti for ti in task_instances(d, run_id) if ti["state"] == "running" and ti["hostname"]]
        chosen = [ti for ti in running if ti["task_id"] == task_id]
        if chosen:
            worker = chosen[0]["hostname"]
            d.kill_worker(worker)
            print(f"SIGKILLed worker {worker} at {datetime.now(timezone.utc).isoformat()}")
            time.sleep(KILLED_FOR)
            d.start_worker(worker)
            return worker, [ti for ti in running if ti["hostname"] == worker]
        state = d.api("GET", f"dags/{DAG}/dagRuns/{run_id}")["state"]
        assert state in ("queued", "running"), f"run {run_id} ended {state} before any {task_id} ran"
        time.sleep(0.2)
    raise AssertionError(f"no {task_id} instance ran within {timeout} s")


# --------------------------------------------------------------------------------------------------
# REST API steps


def clear_source(d: Deployment, run_id: str, source: str) -> set[str]:
    """Clear a source's task group and everything downstream (`clearTaskInstances`, as the UI's Clear does)."""
    group = [
        t["task_id"]
        for t in d.api("GET", f"dags/{DAG}/tasks")["tasks"]
        if t["task_id"].startswith(f"{source}.")
    ]
    cleared = d.api(
        "POST",
        f"dags/{DAG}/clearTaskInstances",
        json={
            "dry_run": False,
            "dag_run_id": run_id,
            "task_ids": group,
            "only_failed": False,
            "include_downstream": True,
            "reset_dag_runs": True,
        },
    )
    cleared_ids = {ti["task_id"] for ti in cleared["task_instances"]}
    assert set(group) <= cleared_ids
    return cleared_ids


def task_states(d: Deployment, run_id: str) -> dict[str, set[str]]:
    states: dict[str, set[str]] = defaultdict(set)
    for ti in task_instances(d, run_id):
        states[ti["task_id"]].add(ti["state"])
    return states


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
