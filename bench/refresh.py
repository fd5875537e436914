"""Unchanged refresh of the whole sample mirror: the second run fetches nothing and takes a fraction of the first.

    .venv/bin/python -m bench.refresh [--images 200]

Builds every replica of the sample mirror (the plain-HTTP archives, the Hugging Face sources behind the Hub stand-in,
the Google Drive sources behind the Drive stand-in, OCR-VQA's URL list and its cover host; `--images` each), serves
them on loopback, and runs the library stages the DAG runs (plan, fetch, shard, extract, finalize, for every source
of the catalog; DocVQA is skipped, as in any run without its registration-only archive) twice into the same local
store under two run ids. Reports both wall times, the bytes fetched, and the GETs the server saw during the second
run: OCR-VQA's dead cover URLs are asked again on purpose (a refresh retries what was missing; they are still dead,
so no image byte comes back), nothing else is.

Airflow is not in these figures: under `airflow dags test` every one of the ~100 task instances costs about half a
second of its own whatever it does, which the docs' performance page reports beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from unittest import mock

from mgdata.ingest import (
    Run,
    ingest_source,
)
from mgdata.run import SourceSkipped
from mgdata.settings import Settings
from offline_mirror.build import build_mirror, stand_in_routes, write_catalog
from offline_mirror.server import MirrorServer
from offline_mirror.web_replicas import COVERS


def one_run(run: Run) -> tuple[int, list[str]]:
    """Every source of the catalog through the library stages: (bytes fetched, sources skipped)."""
    fetched, skipped = 0, []
    for source in run.catalog.selected(None):
        try:
            fetched += ingest_source(run, source)["bytes_fetched"]
        except SourceSkipped:
            skipped.append(source)
    return fetched, skipped


def run(images: int = 200) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="mgdata-bench-refresh-"))
    try:
        replicas = build_mirror(work / "mirror", images_per_source=images)
        with MirrorServer(work / "mirror", routes=stand_in_routes(work / "mirror")) as server:
            catalog = write_catalog(work / "mirror", server.base_url, replicas)
            settings = Settings(storage=(work / "store").as_uri(), catalog=str(catalog))
            stand_ins = {
                "HF_ENDPOINT": server.base_url,
                "MGDATA_GDRIVE_URL": f"{server.base_url}/drive.google.com",
            }
            with mock.patch.dict(os.environ, stand_ins):
                t = time.perf_counter()
                first_bytes, skipped = one_run(Run(settings, "first"))
                first = time.perf_counter() - t
                seen = len(server.requests)
                t = time.perf_counter()
                second_bytes, _ = one_run(Run(settings, "second"))
                second = time.perf_counter() - t
            gets = [path for method, path, _ in server.requests[seen:] if method == "GET"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cover_gets = sum(1 for p in gets if p.lstrip("/").startswith(COVERS))
    kinds = sorted({r.source for r in replicas})
    setup = (
        f"{len(kinds)} replicated sources x {images} images (HTTP, Hub, Drive, URL list), {', '.join(skipped)} "
        "skipped; library stages (no Airflow), local store"
    )
    return [
        {"tool": "ours: first run", "seconds": round(first, 2), "bytes fetched": first_bytes, "setup": setup},
        {"tool": "ours: unchanged refresh", "seconds": round(second, 2), "bytes fetched": second_bytes,
         "GETs of dead cover URLs (retried on purpose)": cover_gets, "other GETs": len(gets) - cover_gets,
         "ratio to first run": round(second / first, 3), "setup": setup},
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    args = ap.parse_args()
    for row in run(args.images):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
