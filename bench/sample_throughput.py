"""Fetch and extract+validate throughput of the pipeline on the offline sample mirror (no Airflow in the loop).

    .venv/bin/python -m bench.sample_throughput [--images 200] [--store file:///tmp/x | s3://...]

Builds the sample mirror, serves it on loopback, and runs each stage the DAG runs (plan, fetch, shard, extract,
finalize) for every HTTP source, timing fetch (MB/s) and extract+validate (images/s) separately.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from mgdata.ingest import Run, extract_shard, fetch_file, finalize_source, plan_shards, plan_source
from mgdata.settings import Settings
from offline_mirror.build import build_mirror, write_catalog
from offline_mirror.server import MirrorServer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200, help="images per source in the sample mirror")
    ap.add_argument("--store", help="store URL (default: a temporary local folder)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mgdata-bench-"))
    # The plain-HTTP sources: the same archive path every source kind ends in, without the API stand-ins.
    http_sources = ["coco", "gqa", "textvqa", "vg_part1", "vg_part2", "ai2d"]
    replicas = build_mirror(work / "mirror", images_per_source=args.images, sources=http_sources)
    sources = sorted({r.source for r in replicas})
    with MirrorServer(work / "mirror") as server:
        catalog = write_catalog(work / "mirror", server.base_url, replicas)
        run = Run(Settings(storage=args.store or (work / "store").as_uri(), catalog=str(catalog)), "bench")
        fetched = images = 0
        t_fetch = t_extract = 0.0
        for source in sources:
            t0 = time.perf_counter()
            for f in plan_source(run, source):
                fetched += fetch_file(run, source, f["file"])["bytes"]
            t1 = time.perf_counter()
            for shard in plan_shards(run, source):
                images += extract_shard(run, source, shard)["members"]
            finalize_source(run, source)
            t_fetch += t1 - t0
            t_extract += time.perf_counter() - t1
    print(f"sources: {', '.join(sources)}")
    print(f"fetch:   {fetched / 1e6:8.1f} MB in {t_fetch:6.2f} s = {fetched / 1e6 / t_fetch:7.1f} MB/s")
    print(
        f"extract: {images:8d} images in {t_extract:6.2f} s = {images / t_extract:7.1f} images/s "
        "(inflate + sha256 + full decode + store write + manifest)"
    )


if __name__ == "__main__":
    main()
