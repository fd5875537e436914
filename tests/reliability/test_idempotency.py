"""Idempotency: every stage re-run after it succeeded changes nothing (an Airflow retry, or a task cleared from the UI
in a finished run), and clearing the whole finished run converges to the same manifests and objects."""

from __future__ import annotations

import hashlib
import json
import os
from urllib.parse import unquote, urlsplit

from mgdata import manifest
from mgdata.ingest import (
    Run,
    extract_shard,
    fetch_file,
    finalize_source,
    plan_shards,
    plan_source,
    unchanged,
)
from mgdata.report import assemble_run, verify_run
from mgdata.settings import Settings
from mgdata.storage import LocalStore, S3Store, s3_client

SOURCE = "ai2d"


def listing(store: LocalStore) -> dict[str, str]:
    """Every object and its sha256, except this run's own records (`runs/`: timings, attempts, the report's time)
    and the state records, whose content is compared separately without their timings."""
    return {
        o.key: hashlib.sha256(store.read_bytes(o.key)).hexdigest()
        for o in store.list("")
        if not o.key.startswith(("runs/", "state/"))
    }


def manifest_rows(store: LocalStore) -> list[dict]:
    return manifest.read_table(store, manifest.source_key(SOURCE)).to_pylist()


def test_each_stage_twice_changes_nothing(mirror, tmp_path):
    _, catalog, _ = mirror
    store = LocalStore(tmp_path / "store")
    run = Run(Settings(storage=store.url, catalog=catalog, layout_dir=str(tmp_path / "data")), "run1")

    files = plan_source(run, SOURCE)
    for f in files:
        fetch_file(run, SOURCE, f["file"])
    before = listing(store)
    for f in files:  # a retried fetch: the same verified object
        fetch_file(run, SOURCE, f["file"])
    assert listing(store) == before

    shards = plan_shards(run, SOURCE)
    sharded = listing(store)
    assert plan_shards(run, SOURCE) == shards and listing(store) == sharded
    results = [extract_shard(run, SOURCE, s) for s in shards]
    after_extract = listing(store)
    again = [extract_shard(run, SOURCE, s) for s in shards]
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in results]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in again] == strip
    assert listing(store) == after_extract

    first = finalize_source(run, SOURCE)
    rows, objects = manifest_rows(store), listing(store)
    second = finalize_source(run, SOURCE)
    assert manifest_rows(store) == rows and listing(store) == objects
    assert {k: second[k] for k in ("status", "images_ok", "images_invalid")} == {
        k: first[k] for k in ("status", "images_ok", "images_invalid")
    }

    report = assemble_run(run, [SOURCE])
    tree = sorted(p.relative_to(tmp_path / "data") for p in (tmp_path / "data").rglob("*"))
    assert assemble_run(run, [SOURCE]) == report and verify_run(run) == verify_run(run)
    assert sorted(p.relative_to(tmp_path / "data") for p in (tmp_path / "data").rglob("*")) == tree
    assert listing(store) == objects


def test_clearing_a_finished_run_converges(mirror, tmp_path):
    """Clear every task of a finished run (same run id): plan finds nothing to do, the manifest and data/ stay."""
    _, catalog, _ = mirror
    store = LocalStore(tmp_path / "store")
    run = Run(Settings(storage=store.url, catalog=catalog), "run1")

    def whole_run() -> tuple[dict, list, list]:
        planned = plan_source(run, SOURCE)
        for f in planned:
            fetch_file(run, SOURCE, f["file"])
        shards = plan_shards(run, SOURCE)
        for shard in shards:
            extract_shard(run, SOURCE, shard)
        summary = finalize_source(run, SOURCE)
        assemble_run(run, [SOURCE])
        return summary, planned, shards

    first, planned, shards = whole_run()
    assert len(planned) == 1 and shards
    rows, objects = manifest_rows(store), listing(store)
    state = store.read_bytes(f"state/{SOURCE}.json")
    second, planned, shards = whole_run()
    assert first["status"] == second["status"] == "ok"
    assert planned == [] and shards == []  # nothing fetched or extracted again
    assert manifest_rows(store) == rows and listing(store) == objects
    assert store.read_bytes(f"state/{SOURCE}.json") == state


def state_objects(store: LocalStore) -> dict[str, bytes]:
    return {o.key: store.read_bytes(o.key) for o in store.list("state/")}


def test_an_unchanged_refresh_writes_no_state_and_a_forced_one_does(mirror, tmp_path):
    """The state names the run that made the manifest: a later run that changes nothing leaves every state object
    as it was (no write on a refresh), and its summary's diff is since that run; a forced re-extract is named."""
    _, catalog, _ = mirror
    store = LocalStore(tmp_path / "store")
    settings = Settings(storage=store.url, catalog=catalog)

    def whole_run(run: Run) -> dict:
        for f in plan_source(run, SOURCE):
            fetch_file(run, SOURCE, f["file"])
        for shard in plan_shards(run, SOURCE):
            extract_shard(run, SOURCE, shard)
        return finalize_source(run, SOURCE)

    whole_run(Run(settings, "run1"))
    state = state_objects(store)
    for run_id in ("run2", "run3"):
        summary = whole_run(Run(settings, run_id))
        assert summary["status"] == "ok" and summary["added"] == summary["removed"] == summary["changed"] == 0
        assert state_objects(store) == state, f"{run_id} rewrote the state of an unchanged source"
        recorded = json.loads(store.read_bytes(f"runs/{run_id}/sources/{SOURCE}/summary.json"))
        assert recorded["diff_since"] == "run1"

    whole_run(Run(settings, "run4", force=True))
    assert json.loads(store.read_bytes(f"state/{SOURCE}.json"))["run_id"] == "run4"


def test_an_unchanged_source_costs_its_plan_task_no_manifest_read_and_one_read_per_state(
    mirror, moto_endpoint
):
    """The plan task of an unchanged source finalizes it from the state: no manifest read (its counts are the
    state's), each file state read once; the verdict lists the skip records of every source at once. Counted at
    the S3 client (every request botocore sends)."""
    _, catalog, _ = mirror
    client = s3_client(endpoint_url=moto_endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                       region_name="us-east-1")  # fmt: skip
    bucket = f"refresh-{os.urandom(4).hex()}"
    client.create_bucket(Bucket=bucket)
    store = S3Store(bucket, "p", client)
    settings = Settings(storage=store.url, catalog=catalog)
    first = Run(settings, "run1", _store=store)
    for f in plan_source(first, SOURCE):
        fetch_file(first, SOURCE, f["file"])
    for shard in plan_shards(first, SOURCE):
        extract_shard(first, SOURCE, shard)
    finalize_source(first, SOURCE)

    sent: list[tuple[str, str]] = []

    def record(request, **_):
        url, inside = urlsplit(request.url), f"/{bucket}/p/"
        path = unquote(url.path)  # an object's key under the store, else "?" and the bucket request's query
        sent.append(
            (request.method, path[len(inside) :] if path.startswith(inside) else "?" + unquote(url.query))
        )

    client.meta.events.register("before-send.s3", record)
    again = Run(settings, "run2", _store=store)
    assert plan_source(again, SOURCE) == [] and unchanged(again, SOURCE)
    summary = finalize_source(again, SOURCE)

    reads = [key for method, key in sent if method in ("GET", "HEAD")]
    assert f"manifests/{SOURCE}.parquet" not in [k for m, k in sent if m == "GET"], sent
    file_states = [k for k in reads if k.startswith(f"state/{SOURCE}/files/")]
    assert file_states and len(file_states) == len(set(file_states)), file_states
    counts = manifest.counts(manifest.read_table(store, manifest.source_key(SOURCE)))
    assert (summary["images_ok"], summary["images_invalid"]) == (counts["ok"], counts["invalid"])
    assert summary["added"] == summary["removed"] == summary["changed"] == 0
    # the summary is the one finalize writes when it reads the manifest and the states itself
    full = Run(settings, "run2", _store=store)
    plan_source(full, SOURCE)
    full.put_record(SOURCE, "plan.json", {k: v for k, v in full.record(SOURCE, "plan.json").items()
                                          if k not in ("unchanged", "file_states")}, persist=False)  # fmt: skip
    finalize_source(full, SOURCE)
    timings = ("started", "finished")
    assert {k: v for k, v in again.record(SOURCE, "summary.json").items() if k not in timings} == {
        k: v for k, v in full.record(SOURCE, "summary.json").items() if k not in timings
    }

    sent.clear()
    assemble_run(again, [SOURCE])
    verify_run(again)
    lists = [k for m, k in sent if m == "GET" and k.startswith("?")]
    skip_listings = [q for q in lists if "prefix=p/state/" in q]
    assert len(skip_listings) == 1 and "skipped" not in skip_listings[0], lists
