"""A zip shard cut among forked worker processes (`extract.worker_parts`) lands what one process lands: the same
rows, objects and quarantine, the same store invariant; a worker that dies fails its shard by name, writes no
manifest part, and the retry completes."""

from __future__ import annotations

import hashlib
import os
import signal

import pytest
from odd_sources import set_shard_workers

from mgdata import extract, manifest
from mgdata.check import check_store
from mgdata.ingest import (
    Run,
    SourceFailed,
    extract_shard,
    fetch_file,
    finalize_source,
    plan_shards,
    plan_source,
)
from mgdata.report import assemble_run
from mgdata.settings import Settings
from mgdata.storage import LocalStore

SOURCE = "ai2d"


def landed(store: LocalStore) -> dict:
    """Everything a run leaves that must not depend on how its shard was cut: objects by sha256, and the rows
    without their run id."""
    objects = {
        o.key: hashlib.sha256(store.read_bytes(o.key)).hexdigest()
        for prefix in ("data/", "quarantine/")
        for o in store.list(prefix)
    }
    rows = [
        {k: v for k, v in r.items() if k != "run_id"}
        for r in manifest.read_table(store, manifest.source_key(SOURCE)).to_pylist()
    ]
    return {"objects": objects, "rows": rows}


def fetched(catalog: str, root) -> Run:
    store = LocalStore(root)
    run = Run(Settings(storage=store.url, catalog=catalog), "run1", _store=store)
    for f in plan_source(run, SOURCE):
        fetch_file(run, SOURCE, f["file"])
    return run


def extract_all(run: Run) -> None:
    for shard in plan_shards(run, SOURCE):
        extract_shard(run, SOURCE, shard)
    assert finalize_source(run, SOURCE)["status"] == "ok"
    assemble_run(run, [SOURCE])


@pytest.fixture
def forking(monkeypatch):
    """Every zip shard, however small, cut among 3 worker processes; the parts each call forked are recorded."""
    set_shard_workers(monkeypatch, forked=True)
    calls: list[int] = []
    real = extract.forked_map

    def recording(fn, items, **kw):
        calls.append(len(items))
        return real(fn, items, **kw)

    monkeypatch.setattr(extract, "forked_map", recording)
    return calls


@pytest.fixture(scope="module")
def in_one_process(mirror, tmp_path_factory):
    _, catalog, _ = mirror
    run = fetched(catalog, tmp_path_factory.mktemp("one-process"))
    with pytest.MonkeyPatch.context() as monkeypatch:
        set_shard_workers(monkeypatch, forked=False)
        extract_all(run)
    return landed(run.store)


def test_worker_processes_land_what_one_process_lands(mirror, tmp_path, forking, in_one_process):
    _, catalog, replica = mirror
    run = fetched(catalog, tmp_path / "store")
    extract_all(run)
    assert forking and all(n == 3 for n in forking)  # every shard was cut in three
    got = landed(run.store)
    assert got == in_one_process
    assert any(r["status"] == "invalid" for r in got["rows"])  # the replica's broken members came through too
    assert check_store(run.store, run.catalog).problems == []


def test_a_worker_that_dies_fails_its_shard_by_name_and_the_retry_completes(
    mirror, tmp_path, forking, in_one_process, monkeypatch
):
    _, catalog, _ = mirror
    run = fetched(catalog, tmp_path / "store")
    parent, check = os.getpid(), extract.check_image
    victim = next(r["path"] for r in in_one_process["rows"] if r["status"] == "ok")

    def dying(data, target, **kw):  # the worker that meets this member is killed, as by the OOM killer
        if os.getpid() != parent and target == victim:
            os.kill(os.getpid(), signal.SIGKILL)
        return check(data, target, **kw)

    monkeypatch.setattr(extract, "check_image", dying)
    shards = plan_shards(run, SOURCE)
    died = r"source 'ai2d', file .*, shard 00000: worker \d of 3 was killed by signal 9 \(SIGKILL\)"
    with pytest.raises(SourceFailed, match=died):
        for shard in shards:
            extract_shard(run, SOURCE, shard)
    assert list(run.store.list(manifest.parts_prefix(SOURCE))) == []  # the shard's commit record not written

    monkeypatch.setattr(extract, "check_image", check)
    retry = Run(run.settings, "run1", _store=run.store)
    extract_all(retry)
    assert landed(retry.store) == in_one_process
    assert check_store(retry.store, retry.catalog).problems == []
