"""The image check's cost per JPEG, scaled against full decode, and the proof that both give the same verdicts.

    .venv/bin/python -m bench.image_check [--images 500] [--rounds 3]

On the COCO-like photos of `bench.archive_ingest` (640x480, about 158 KB): the CPU per image of `check_image` with
the scaled decode (what extract runs) and with `full_decode=True`, and of the baseline's `Image.open(...).load()`,
one thread, interleaved `--rounds` times. Then every variant of the corruption corpus (`offline_mirror.jpeg_corpus`)
through the trainer's `Image.open(...).convert('RGB')` and both checks: the number of variants and the verdicts that
differ (0 is the claim the scaled decode rests on).
"""

from __future__ import annotations

import argparse
import io
import json
import time
import warnings

from PIL import Image

from bench.archive_ingest import photo_pool
from bench.common import loadavg, min_median
from mgdata.images import check_image
from offline_mirror.jpeg_corpus import corpus


def _full_load(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as im:
        im.load()


def _trainer_opens(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.convert("RGB")
    except Exception:
        return False
    return True


def _cpu_ms_per_image(work, photos: list[bytes]) -> float:
    started = time.process_time()
    for data in photos:
        work(data)
    return 1000 * (time.process_time() - started) / len(photos)


def run(images: int = 500, rounds: int = 3) -> list[dict]:
    photos = photo_pool(158, count=images)
    tools = {
        "ours: check_image, scaled decode (what extract runs)": lambda d: check_image(d, "x.jpg"),
        "ours: check_image, full_decode=True": lambda d: check_image(d, "x.jpg", full_decode=True),
        "baseline: Image.open + load (a full decode)": _full_load,
    }
    names, times = list(tools), {name: [] for name in tools}
    for r in range(rounds):  # interleaved as bench.common.interleaved does, timing CPU rather than wall
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(_cpu_ms_per_image(tools[name], photos))
    setup = f"{images} JPEGs 640x480, mean {sum(map(len, photos)) // len(photos) // 1000} KB, 1 thread, load {loadavg()}"
    baseline = min_median(times["baseline: Image.open + load (a full decode)"])[1]
    rows = []
    for name, samples in times.items():
        low, median = min_median(samples)
        rows.append({"tool": name, "CPU ms/image (median)": round(median, 3), "(min)": round(low, 3),
                     "÷ full decode": round(median / baseline, 2), "setup": setup})  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        variants = differ = 0
        for _, data in corpus():
            variants += 1
            opens = _trainer_opens(data)
            scaled, full = check_image(data, "x.jpg"), check_image(data, "x.jpg", full_decode=True)
            differ += (scaled.status != "invalid") != opens or (scaled.status, scaled.error) != (
                full.status,
                full.error,
            )
    rows.append({"tool": "corruption corpus: scaled check vs the trainer's convert('RGB') and vs full_decode",
                 "variants": variants, "verdicts that differ": differ})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    for row in run(args.images, args.rounds):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
