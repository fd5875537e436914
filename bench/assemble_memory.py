"""Memory of `assemble` with a layout: one source of N one-byte images in a local store, laid out by `assemble_run`.

    .venv/bin/python -m bench.assemble_memory [--files 300000]

Prints the task's RSS before and its peak (VmHWM, reset just before) during `assemble_run`: what `assemble` holds per
file of the largest source (the layout goes one source at a time).
"""

from __future__ import annotations

import argparse
import gc
import re
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from mgdata import manifest
from mgdata.catalog import SHIPPED_CATALOG
from mgdata.report import assemble_run
from mgdata.run import Run, put_json
from mgdata.settings import Settings
from mgdata.storage import LocalStore

SOURCE, PREFIX = "llava_pretrain", "LLaVA-Pretrain/images"


def status_mb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(field + r":\s+(\d+)", f.read()).group(1)) // 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=300_000)
    n = ap.parse_args().files
    with tempfile.TemporaryDirectory(prefix="mgdata-bench-assemble-") as tmp:
        root = Path(tmp)
        store = LocalStore(root / "store")
        folder = root / "store" / "data" / PREFIX
        folder.mkdir(parents=True)
        paths = [f"{PREFIX}/{i:09d}.jpg" for i in range(n)]
        for p in paths:
            (root / "store" / "data" / p).write_bytes(b"x")
        ones = pa.array([1] * n, pa.int64())
        table = pa.table(
            {"path": paths, "bytes": ones, "sha256": ["0" * 64] * n, "format": ["JPEG"] * n,
             "width": ones.cast(pa.int32()), "height": ones.cast(pa.int32()), "status": ["ok"] * n,
             "error": pa.nulls(n, pa.string()), "origin": paths, "run_id": ["bench"] * n},
            schema=manifest.SCHEMA,
        )  # fmt: skip
        manifest.write_table(store, manifest.source_key(SOURCE), table)
        del table, paths, ones
        settings = Settings(storage=store.url, catalog=str(SHIPPED_CATALOG), layout_dir=str(root / "data"))
        run = Run(settings, "bench")
        put_json(store, run.key(SOURCE, "summary.json"), {"source": SOURCE, "status": "ok"})
        gc.collect()
        before = status_mb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the peak from here on
        started = time.perf_counter()
        out = assemble_run(run, [SOURCE])
        print(
            f"{n:,} files laid out ({out['layout_files']:,}) in {time.perf_counter() - started:.1f} s; "
            f"RSS before {before} MB, peak during assemble {status_mb('VmHWM')} MB"
        )


if __name__ == "__main__":
    main()
