"""`python -m mgdata check`: the invariant checker the reliability tests use, run as an operator runs it on a store.
Exit 0 when the store agrees with its manifests, reports and layout; 1 listing each problem otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

from odd_sources import PREFIX, SOURCE, png, publish, zip_of

from mgdata.ingest import Run, ingest_source
from mgdata.report import assemble_run
from mgdata.settings import Settings
from mgdata.storage import LocalStore


def check(store: LocalStore, catalog: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MGDATA_STORAGE": store.url, "MGDATA_CATALOG": catalog}
    env.pop("MGDATA_LAYOUT_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "mgdata", "check", *args], env=env, capture_output=True, text=True
    )


def test_check_lists_orphans_missing_objects_and_wrong_bytes_then_passes_once_repaired(mirror, tmp_path):
    images = [(f"{PREFIX}img{i}.png", png((i, 0, 0))) for i in range(4)]
    catalog = publish(mirror, tmp_path, [("ai2d.zip", zip_of(images))])
    store = LocalStore(tmp_path / "store")
    run = Run(Settings(storage=store.url, catalog=catalog), "run1", _store=store)
    ingest_source(run, SOURCE)
    assemble_run(run, [SOURCE])

    ok = check(store, catalog, "--source", SOURCE)
    assert ok.returncode == 0, ok.stderr
    assert "the invariant holds" in ok.stdout and "4 usable" in ok.stdout

    kept = store.read_bytes("data/ai2d/images/img1.png")
    store.put_bytes("data/ai2d/images/orphan.png", png((9, 9, 9)))
    store.delete("data/ai2d/images/img0.png")
    store.put_bytes("data/ai2d/images/img1.png", kept[:-1] + b"\0")  # same size, other bytes
    bad = check(store, catalog)
    assert bad.returncode == 1
    for expected in (
        "ai2d: object in data/ without a usable row (orphan): ai2d/images/orphan.png",
        "ai2d: usable row without its object in data/: ai2d/images/img0.png",
        "ai2d: object sha256 differs from its row: ai2d/images/img1.png",
    ):
        assert expected in bad.stderr, bad.stderr
    sizes_only = check(store, catalog, "--sizes-only")
    assert "sha256 differs" not in sizes_only.stderr and "orphan" in sizes_only.stderr

    # A refresh repairs all of it (force: fetch and extract again), and the checker agrees.
    again = Run(Settings(storage=store.url, catalog=catalog), "run2", force=True, _store=store)
    store.delete("data/ai2d/images/orphan.png")  # no row ever named it: the operator removes it
    ingest_source(again, SOURCE)
    assemble_run(again, [SOURCE])
    assert check(store, catalog).returncode == 0
