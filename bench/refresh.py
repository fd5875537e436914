"""Unchanged refresh: the second run over an unchanged sample mirror fetches nothing and takes a fraction of the first.

    .venv/bin/python bench/refresh.py [--images 200]

Builds the sample mirror's plain-HTTP sources (coco, gqa, textvqa, vg_part1, vg_part2, ai2d; `--images` each), serves
them on loopback, and runs the library stages the DAG runs (plan, fetch, shard, extract, finalize; no Airflow) twice
into the same local store under two run ids. Reports both wall times, the bytes fetched and the GETs the server saw
during the second run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from mgdata.ingest import Run, extract_shard, fetch_file, finalize_source, plan_shards, plan_source
from mgdata.mirror.build import build_mirror, write_catalog
from mgdata.mirror.server import MirrorServer
from mgdata.settings import Settings

HTTP_SOURCES = ["coco", "gqa", "textvqa", "vg_part1", "vg_part2", "ai2d"]


def one_run(run: Run, sources: list[str]) -> int:
    fetched = 0
    for source in sources:
        for f in plan_source(run, source):
            fetched += fetch_file(run, source, f["file"])["bytes"]
        for shard in plan_shards(run, source):
            extract_shard(run, source, shard)
        finalize_source(run, source)
    return fetched


def run(images: int = 200) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="mgdata-bench-refresh-"))
    try:
        replicas = build_mirror(work / "mirror", images_per_source=images, sources=HTTP_SOURCES)
        sources = sorted({r.source for r in replicas})
        with MirrorServer(work / "mirror") as server:
            catalog = write_catalog(work / "mirror", server.base_url, replicas)
            settings = Settings(storage=(work / "store").as_uri(), catalog=str(catalog))
            t = time.perf_counter()
            first_bytes = one_run(Run(settings, "first"), sources)
            first = time.perf_counter() - t
            seen = len(server.requests)
            t = time.perf_counter()
            second_bytes = one_run(Run(settings, "second"), sources)
            second = time.perf_counter() - t
            gets = sum(1 for method, *_ in server.requests[seen:] if method == "GET")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    setup = f"{len(sources)} HTTP sources x {images} images, library stages (no Airflow), local store"
    return [
        {"tool": "ours: first run", "seconds": round(first, 2), "bytes fetched": first_bytes, "setup": setup},
        {"tool": "ours: unchanged refresh", "seconds": round(second, 2), "bytes fetched": second_bytes,
         "GETs": gets, "ratio to first run": round(second / first, 3), "setup": setup},
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    args = ap.parse_args()
    for row in run(args.images):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
