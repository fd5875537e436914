"""Bookkeeping at scale: merge, diff and the ready-to-train check on a synthetic 1.3M-row corpus.

    .venv/bin/python -m bench.bookkeeping [--rows 1300000]

Writes, into a temporary local store, the previous merged manifest (`--rows` rows) and this run's shard parts (100
parts; 1 % of the paths changed, 0.5 % added, 0.5 % removed), and a training JSON with one sample per row (one in ten
text-only, as in MG-LLaVA's) plus the bbox JSON. A child process then times, like finalize and the ready-to-train task
do: reading + `manifest.merge` of the parts and writing the merged manifest, `manifest.diff` against the previous one,
and the ready-to-train check of the training JSON against the merged manifest's paths. Its peak RSS
(`resource.getrusage`) covers only this work, not the generation.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from bench.rss import peak_rss_mb
from mgdata import manifest
from mgdata.annotations import Check
from mgdata.storage import LocalStore

PARTS = 100


def rows_table(ids: range | list[int], salt: str) -> pa.Table:
    paths = [f"coco/train2017/{i:012d}.jpg" for i in ids]
    n = len(paths)
    return pa.table(
        {
            "path": paths,
            "bytes": pa.array([160_000] * n, pa.int64()),
            "sha256": [f"{salt}{i:058x}" for i in ids],
            "format": ["JPEG"] * n,
            "width": pa.array([640] * n, pa.int32()),
            "height": pa.array([480] * n, pa.int32()),
            "status": ["ok"] * n,
            "error": pa.nulls(n, pa.string()),
            "origin": [f"raw/coco/train2017.zip!train2017/{i:012d}.jpg" for i in ids],
            "run_id": ["bench"] * n,
        },
        schema=manifest.SCHEMA,
    )


def generate(root: Path, rows: int) -> None:
    store = LocalStore(root / "store")
    manifest.write_table(store, "manifests/coco.parquet", rows_table(range(rows), "000000"))
    removed, added = rows // 200, rows // 200
    ids = list(range(removed, rows + added))
    step = -(-len(ids) // PARTS)
    for p in range(PARTS):
        chunk = ids[p * step : (p + 1) * step]
        table = rows_table(chunk, "000000")
        changed = [i for i in chunk if i % 100 == 7]  # 1 % of the paths got new bytes
        if changed:
            table = pa.concat_tables([table, rows_table(changed, "111111")])  # a later part wins
        manifest.write_table(store, f"manifests/parts/coco/train2017.zip/{p:05d}.parquet", table)
    with open(root / "train.json", "w") as f:
        f.write("[")
        for i in range(removed, rows + added):
            sample = {"id": str(i), "conversations": [{"from": "human", "value": "<image>\nWhat is this?"}]}
            sample["conversations"].append({"from": "gpt", "value": "A picture of a thing. " * 10})
            if i % 10:
                sample["image"] = f"coco/train2017/{i:012d}.jpg"
            f.write(("," if i != removed else "") + json.dumps(sample))
        f.write("]")
    with open(root / "boxes.json", "w") as f:
        entries = (
            json.dumps({"id": str(i), "boxes": [[0.1, 0.2, 0.3, 0.4]]}) for i in range(removed, rows, 2)
        )
        f.write("[" + ",".join(entries) + "]")


def measure(root: Path) -> dict:
    """The timed work (in a child process, so its peak RSS is this work's)."""
    store = LocalStore(root / "store")
    out = {}
    t = time.perf_counter()
    parts = [manifest.read_table(store, o.key) for o in store.list("manifests/parts/coco/")]
    merged = manifest.merge(parts)
    del parts
    old = manifest.read_table(store, "manifests/coco.parquet")
    manifest.write_table(store, "manifests/coco.new.parquet", merged)
    out["merge s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    d = manifest.diff(old, merged)
    out["diff s"] = round(time.perf_counter() - t, 2)
    out["diff"] = d.as_dict()
    del old
    t = time.perf_counter()
    present = set(merged["path"].to_pylist())
    del merged

    def resolve(path: str) -> str:
        return "present" if path in present else "missing"

    with open(root / "train.json", "rb") as s, open(root / "boxes.json", "rb") as b:
        result = Check().check_file("train.json", s, resolve, boxes_name="boxes.json", boxes=b)
    out["ready-to-train s"] = round(time.perf_counter() - t, 2)
    out["samples"] = result["samples"]
    out["peak RSS MB"] = round(peak_rss_mb())
    return out


def run(rows: int = 1_300_000) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="mgdata-bench-books-") as tmp:
        generate(Path(tmp), rows)
        size = (Path(tmp) / "train.json").stat().st_size
        t = time.perf_counter()
        child = subprocess.run(
            [sys.executable, "-m", "bench.bookkeeping", "--measure", tmp],
            cwd=Path(__file__).resolve().parents[1],
            check=True,
            capture_output=True,
            text=True,
        )
        total = time.perf_counter() - t
    row = json.loads(child.stdout)
    row |= {"tool": "ours: merge + diff + ready-to-train", "seconds": round(total, 2)}
    row["setup"] = f"{rows:,} rows in {PARTS} parts, training JSON {size / 1e6:.0f} MB"
    return [row]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_300_000)
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return
    for row in run(args.rows):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
