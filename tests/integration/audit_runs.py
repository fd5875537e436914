"""Two runs' worth of store content for the audit page's tests, written by the library's own assemble and verify.

Run 1: coco ingested (3 usable images, 1 quarantined), gqa failed, llava_pretrain skipped; one of the two required
training JSONs is in the store, with a missing image, an `mmc4/` path no source provides and a sample without boxes.
Run 2: an unchanged refresh of coco (nothing fetched, nothing changed) and gqa ingested.
Run 3 (`make_failed_ready_run`, for the page's layout): a scheduled run whose logical date is earlier than run 2's but
which finished last; every catalog source (a full chart legend), OCR-VQA with dead URLs, gqa failed again, and the
store ready to train (from the earlier ingests): a failed run over a ready store.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from mgdata import manifest
from mgdata.catalog import SHIPPED_CATALOG
from mgdata.ingest import record_failure, record_skipped
from mgdata.report import assemble_run, verify_run
from mgdata.run import Run, SourceFailed, put_json
from mgdata.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
RUN_1 = "scheduled__2026-11-16T00:00:00+00:00"
RUN_2 = "manual__2026-11-23T09:30:00+00:00"
RUN_3 = "scheduled__2026-11-20T00:00:00+00:00"
DEAD_COVERS = 3  # OCR-VQA rows of run 3 whose URL was dead
QUARANTINED = "coco/train2017/000000000666.jpg"
PRETRAIN = "annotations/train_json/pretrain_blip_allava_1266k.json"
PRETRAIN_BOXES = "annotations/bbox_json/train/pretrain_blip_allava_1266k_only_box.json"


def _summary(run: Run, source: str, rows: list[tuple[str, str]], *, fetched: int, diff: dict, since) -> None:
    counts = dict.fromkeys(manifest.STATUSES, 0)
    for _, status in rows:
        counts[status] += 1
    put_json(
        run.store,
        run.key(source, "summary.json"),
        {
            "source": source,
            "status": "ok",
            "files_fetched": 1 if fetched else 0,
            "bytes_fetched": fetched,
            "images_ok": counts["ok"],
            "images_normalized": counts["normalized"],
            "images_invalid": counts["invalid"],
            "images_missing": counts["missing"],
            "expected_images": len(rows),
            "diff": {k: len(v) for k, v in diff.items()},
            "diff_paths": diff,
            "diff_since": since,
            "started": (datetime.now(timezone.utc) - timedelta(seconds=215)).isoformat(timespec="seconds"),
            "finished": (datetime.now(timezone.utc) - timedelta(seconds=5)).isoformat(timespec="seconds"),
            "error": None,
            "run_id": run.run_id,
        },
    )
    table = manifest.to_table(
        [
            {
                "path": p,
                "status": s,
                "bytes": 100,
                "error": "truncated image: 40 of 1000 bytes" if s == "invalid" else None,
            }
            | {"origin": f"raw/{source}/x.zip!{p}", "run_id": run.run_id}
            for p, s in rows
        ]
    )
    manifest.write_table(run.store, manifest.source_key(source), table)


def make_runs(store_url: str) -> list[str]:
    settings = Settings(storage=store_url, catalog=str(SHIPPED_CATALOG))
    coco = [
        ("coco/train2017/000000000009.jpg", "ok"),
        ("coco/train2017/000000000025.jpg", "ok"),
        ("coco/train2017/000000000030.jpg", "normalized"),
        (QUARANTINED, "invalid"),
    ]
    gqa = [("gqa/images/1.jpg", "ok"), ("gqa/images/2.jpg", "ok")]
    added = {"added": [p for p, _ in coco], "removed": [], "changed": []}
    unchanged = {"added": [], "removed": [], "changed": []}

    first = Run(settings, RUN_1)
    _summary(first, "coco", coco, fetched=19_336_861, diff=added, since=None)
    record_failure(
        first,
        "gqa",
        "fetch[images.zip]",
        SourceFailed("gqa/images.zip: HTTP 503 from downloads.cs.stanford.edu"),
    )
    record_skipped(first, "llava_pretrain", "not in this run's `sources` selection")
    turn = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."}]
    samples = [
        {"id": "000000000009", "image": "coco/train2017/000000000009.jpg", "conversations": turn},
        {"id": "9b", "image": "coco/train2017/000000000404.jpg", "conversations": turn},
        {"id": "sa_1", "image": "mmc4/images/sa_1.jpg", "conversations": turn},
        {"id": "t", "conversations": turn[1:]},
        {
            "id": "user-role",
            "conversations": [{"from": "user", "value": "hi"}, turn[1]],
        },  # NotImplementedError
    ]
    first.store.put_bytes(PRETRAIN, json.dumps(samples).encode())
    boxes = [{"id": i, "boxes": [], "scores": [], "labels": []} for i in ("000000000009", "9b")]
    first.store.put_bytes(PRETRAIN_BOXES, json.dumps(boxes).encode())
    assemble_run(first, ["coco", "gqa", "llava_pretrain"])
    verify_run(first)

    time.sleep(1.1)  # reports are ordered by their `finished` second
    second = Run(settings, RUN_2)
    _summary(second, "coco", coco, fetched=0, diff=unchanged, since=RUN_1)
    _summary(
        second, "gqa", gqa, fetched=5_000_000, diff={**unchanged, "added": [p for p, _ in gqa]}, since=None
    )
    assemble_run(second, ["coco", "gqa"])
    verify_run(second)
    return [RUN_1, RUN_2]


def make_failed_ready_run(store_url: str) -> str:
    """Run 3, after `make_runs`: see the module docstring."""
    settings = Settings(storage=store_url, catalog=str(SHIPPED_CATALOG))
    time.sleep(1.1)  # finishes after run 2
    run = Run(settings, RUN_3)
    unchanged = {"added": [], "removed": [], "changed": []}
    names = list(run.catalog.sources)
    for name in names:
        if name in ("coco", "gqa"):
            continue
        layout = run.source(name).layout
        rows = [(f"{layout[0]}/{i}.jpg", "ok") for i in range(4)] if layout else []
        if name == "ocr_vqa":
            rows += [(f"{layout[0]}/dead{i}.jpg", "missing") for i in range(DEAD_COVERS)]
        _summary(
            run, name, rows, fetched=1_000_000, diff={**unchanged, "added": [p for p, _ in rows]}, since=None
        )
    coco = manifest.read_table(run.store, manifest.source_key("coco")).select(["path", "status"]).to_pylist()
    _summary(run, "coco", [(r["path"], r["status"]) for r in coco], fetched=0, diff=unchanged, since=RUN_2)
    record_failure(
        run,
        "gqa",
        "fetch[images.zip]",
        SourceFailed("gqa/images.zip: HTTP 503 from downloads.cs.stanford.edu"),
    )
    present = ["coco/train2017/000000000009.jpg", "gqa/images/1.jpg"]  # gqa's from run 2's ingest
    for entry in run.catalog.training:
        if entry.optional:
            continue
        samples = [{"id": f"s{i}", "image": p, "conversations": []} for i, p in enumerate(present)]
        run.store.put_bytes(entry.json_key, json.dumps(samples).encode())
        boxes = [{"id": f"s{i}", "boxes": [], "scores": [], "labels": []} for i in range(len(present))]
        run.store.put_bytes(entry.boxes, json.dumps(boxes).encode())
    assemble_run(run, names)
    verify_run(run)
    return RUN_3


@contextmanager
def api_server_app(store_url: str, jwt_secret: str) -> Iterator[object]:
    """`create_app()` (the app `airflow api-server` serves) with the repo's plugins/ and `store_url` as the store; the
    environment is restored afterwards."""
    mp = pytest.MonkeyPatch()
    mp.setenv("AIRFLOW__CORE__PLUGINS_FOLDER", str(ROOT / "plugins"))
    mp.setenv("AIRFLOW__API_AUTH__JWT_SECRET", jwt_secret)
    mp.setenv("MGDATA_STORAGE", store_url)
    try:
        # Token checks consult the revoked-token table: the session's Airflow home needs its (SQLite) schema.
        subprocess.run(
            [str(Path(sys.executable).with_name("airflow")), "db", "migrate"], check=True, capture_output=True
        )
        from airflow import plugins_manager
        from airflow.api_fastapi.app import create_app

        plugins_manager._get_plugins.cache_clear()
        plugins_manager.get_fastapi_plugins.cache_clear()
        yield create_app()
    finally:
        mp.undo()
