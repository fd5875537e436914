"""Archive ingest (extract + hash + full-decode validation + store) vs `unzip -q` + a single-process Pillow loop.

    .venv/bin/python bench/archive_ingest.py [--images 3000]

Generates the sample mirror's COCO replica (photo-like JPEGs of about 640x480, a COCO-style zip; `--images` of them),
serves it on loopback and fetches it into a local store (not timed). Then, in the same run and from the same zip:

- ours: plan_shards + extract_shard for every shard + finalize_source (inflate, CRC, sha256, full decode, store
  write, manifest), the stages the DAG runs, in this process (the shards one after another, each on extract's
  thread pool; the sample catalog cuts 4 MiB shards);
- baseline: `unzip -q` of the zip, then one process fully decoding every extracted file with Pillow (`Image.load()`);
- ceiling: one thread fully decoding every JPEG from memory (no I/O, no hashing), which gives images/s per core.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
import zipfile
from pathlib import Path

from PIL import Image

from mgdata.ingest import Run, extract_shard, fetch_file, finalize_source, plan_shards, plan_source
from mgdata.mirror.build import build_mirror, write_catalog
from mgdata.mirror.server import MirrorServer
from mgdata.settings import Settings


def decode_all(paths: list[Path]) -> int:
    ok = 0
    for p in paths:
        try:
            with Image.open(p) as im:
                im.load()
            ok += 1
        except Exception:  # the replica's deliberately broken members
            pass
    return ok


def run(images: int = 3000) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="mgdata-bench-ingest-"))
    try:
        replicas = build_mirror(work / "mirror", images_per_source=images, sources=["coco"])
        with MirrorServer(work / "mirror") as server:
            catalog = write_catalog(work / "mirror", server.base_url, replicas)
            run_ = Run(Settings(storage=(work / "store").as_uri(), catalog=str(catalog)), "bench")
            for f in plan_source(run_, "coco"):
                fetch_file(run_, "coco", f["file"])
        zip_path = next((work / "store" / "raw" / "coco").glob("*.zip"))
        with zipfile.ZipFile(zip_path) as z:
            jpegs = [z.read(i) for i in z.infolist() if i.filename.lower().endswith(".jpg")]
        mean_kb = sum(map(len, jpegs)) / len(jpegs) / 1000
        setup = f"{len(jpegs)} JPEGs, mean {mean_kb:.0f} KB, zip {zip_path.stat().st_size / 1e6:.0f} MB, local store"

        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t = time.perf_counter()
        members = 0
        for shard in plan_shards(run_, "coco"):
            members += extract_shard(run_, "coco", shard)["members"]
        finalize_source(run_, "coco")
        ours = time.perf_counter() - t
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        ours_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)

        t = time.perf_counter()
        subprocess.run(["unzip", "-q", str(zip_path), "-d", str(work / "unzipped")], check=True)
        paths = sorted(p for p in (work / "unzipped").rglob("*") if p.is_file())
        decode_all(paths)
        baseline = time.perf_counter() - t

        t = time.perf_counter()
        decoded = 0
        for data in jpegs:
            try:
                with Image.open(io.BytesIO(data)) as im:
                    im.load()
                decoded += 1
            except Exception:  # the replica's deliberately broken members
                pass
        ceiling = time.perf_counter() - t
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cores = os.cpu_count() or 1
    return [
        {"tool": "ours: extract+sha256+decode+store+manifest", "seconds": round(ours, 2),
         "images/s": round(members / ours), "images/s per core": round(members / ours / cores),
         "CPU use (cores)": round(ours_cpu / ours, 2), "ratio to baseline": round(ours / baseline, 2),
         "setup": setup},
        {"tool": "baseline: unzip -q + 1-process Pillow decode", "seconds": round(baseline, 2),
         "images/s": round(len(paths) / baseline), "setup": setup},
        {"tool": "ceiling: in-memory Pillow decode, 1 thread", "seconds": round(ceiling, 2),
         "images/s": round(decoded / ceiling), "images/s per core": round(decoded / ceiling), "setup": setup},
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=3000)
    args = ap.parse_args()
    for row in run(args.images):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
