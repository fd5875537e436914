"""Throughput and memory of the ready-to-train check on a generated training JSON in MG-LLaVA's format.

    .venv/bin/python -m bench.ready_to_train [--samples 300000] [--data DIR]

Writes a LLaVA-style JSON (one in ten samples text-only, ~600 bytes of conversation each) and a bbox JSON covering
half the ids, then times the check twice: once to measure speed, once under tracemalloc for peak Python memory.
With `--data`, the paths are checked against that folder (stat per path); by default every path counts as present.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import tracemalloc
from pathlib import Path

from mgdata.annotations import Check, folder_resolver


def write_jsons(folder: Path, n: int) -> tuple[Path, Path]:
    train, boxes = folder / "train.json", folder / "train_only_box.json"
    talk = "word " * 100
    with open(train, "w") as f:
        f.write("[")
        for i in range(n):
            sample = {"id": str(i), "conversations": [{"from": "human", "value": "<image>\nWhat?"}]}
            sample["conversations"].append({"from": "gpt", "value": talk})
            if i % 10:
                sample["image"] = f"coco/train2017/{i:012d}.jpg"
            f.write(("," if i else "") + json.dumps(sample))
        f.write("]")
    with open(boxes, "w") as f:
        entries = (
            json.dumps({"id": str(i), "boxes": [[0.1, 0.2, 0.3, 0.4]], "scores": [0.9], "labels": ["x"]})
            for i in range(0, n, 2)
        )
        f.write("[" + ",".join(entries) + "]")
    return train, boxes


def check(train: Path, boxes: Path, resolve) -> dict:
    c = Check()
    with open(train, "rb") as s, open(boxes, "rb") as b:
        return c.check_file(str(train), s, resolve, boxes_name=str(boxes), boxes=b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=300_000)
    ap.add_argument("--data", type=Path, help="check paths against this data/ folder")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mgdata-bench-") as tmp:
        train, boxes = write_jsons(Path(tmp), args.samples)
        size = train.stat().st_size
        resolve = folder_resolver(args.data) if args.data else (lambda path: "present")
        started = time.perf_counter()
        result = check(train, boxes, resolve)
        seconds = time.perf_counter() - started
        tracemalloc.start()
        check(train, boxes, resolve)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    print(
        f"{result['samples']:,} samples, {size / 1e6:.0f} MB: {seconds:.1f} s, {size / 1e6 / seconds:.0f} MB/s, "
        f"{result['samples'] / seconds:,.0f} samples/s; peak Python memory {peak / 1e6:.1f} MB"
    )


if __name__ == "__main__":
    main()
