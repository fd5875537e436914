"""Archive ingest (extract + hash + full-decode validation + store) vs `unzip -q` + a single-process Pillow loop.

    .venv/bin/python -m bench.archive_ingest [--images 5000] [--kb 160] [--rounds 3]

Generates the sample mirror's COCO replica (a COCO-style zip with `--images` JPEGs and its deliberately broken
members), gives every valid JPEG member the size of a real COCO photo (`--kb`, about 160 KB at 640x480: noisy
photo-like pictures at quality 90, drawn from a pool of distinct ones), serves it on loopback and fetches it into a
local store (not timed). Then, interleaved `--rounds` times, from the same zip:

- ours, twice: plan_shards, extract_shard for every shard, finalize_source (inflate, CRC, sha256, image check,
  store write, manifest), the stages the DAG runs, on shards of the shipped catalog's 256 MiB, each shard cut among
  forked worker processes (MGDATA_EXTRACT_PROCESSES, the cores). First as an executor runs the mapped extract tasks
  with one slot per core (LocalExecutor's parallelism or a Celery worker's concurrency = cores): a fresh
  `python -m bench.extract_task` per shard, `cores` at a time, each with MGDATA_EXTRACT_THREADS=2 (its interpreter
  start and imports, about 0.6 s of CPU, are in the figure; Airflow's own per-task start-up, about a second per task
  instance, is not); then in this process as `ingest.ingest_source` runs them (`extract_shards`: two shards at a
  time, each on extract's default thread count).
- baseline: `unzip -q` of the zip, then one process fully decoding (`Image.load()`) and sha256-hashing every
  extracted file with Pillow: the same work as ours but the store write and manifest;
- ceiling: one thread fully decoding every JPEG member from memory (only the decode timed), the images/s per core
  that no tool that fully decodes can beat.

Every tool starts on an equal footing: the page cache flushed (`os.sync`, untimed) and no tree freshly deleted (each
output is set aside until the end: see `set_aside`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from bench.common import fetch_replica, interleaved, loadavg, min_median
from mgdata.ingest import Run, extract_shards, finalize_source, plan_shards
from offline_mirror.build import build_mirror
from offline_mirror.media import sha256_file


def decode_all(paths: list[Path]) -> int:
    ok = 0
    for p in paths:
        try:
            data = p.read_bytes()
            hashlib.sha256(data).hexdigest()
            with Image.open(io.BytesIO(data)) as im:
                im.load()
            ok += 1
        except Exception:  # the replica's deliberately broken members
            pass
    return ok


SHARD_BYTES = 256 * 1024 * 1024  # the shipped catalog's default: what a real run's extract tasks get
THREADS_PER_TASK = 2  # MGDATA_EXTRACT_THREADS when every core runs an extract task of its own
POOL = (
    256  # distinct photos; members repeat them (each member is still inflated, hashed, decoded and written)
)


def photo_pool(kb: int, count: int = POOL) -> list[bytes]:
    """JPEGs of about `kb` KB at 640x480 (some portrait): smooth colour fields under per-pixel noise, whose noise
    weight sets the size, as texture does in real photos."""
    weight = 0.35 * kb / 160
    pool = []
    for i in range(count):
        w, h = (640, 480) if i % 4 else (480, 640)
        base = Image.frombytes("RGB", (w // 16, h // 16), os.urandom(w // 16 * h // 16 * 3)).resize((w, h))
        noise = Image.merge("RGB", [Image.effect_noise((w, h), 50) for _ in range(3)])
        out = io.BytesIO()
        Image.blend(base, noise, min(weight, 0.9)).save(out, "JPEG", quality=90)
        pool.append(out.getvalue())
    return pool


def resize_members(zip_path: Path, pool: list[bytes], keep: set[str]) -> None:
    """Rewrite the zip in place with every .jpg member not in `keep` (the replica's broken and mis-named ones)
    replaced by a pool photo; same names, same order."""
    tmp = zip_path.with_suffix(".resized")
    with zipfile.ZipFile(zip_path) as src, zipfile.ZipFile(tmp, "w", compresslevel=1) as dst:
        for n, info in enumerate(src.infolist()):
            resized = info.filename.lower().endswith(".jpg") and info.filename not in keep
            dst.writestr(info, pool[n % len(pool)] if resized else src.read(info))
    os.replace(tmp, zip_path)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children."""
    return sum(
        u.ru_utime + u.ru_stime
        for u in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )


def set_aside(path: Path, trash: Path) -> None:
    """Move a tool's output out of the way, to be deleted after the last round. Deleted at once, its thousands of
    inodes would make the next tool's file creations dearer: on an ext4 without a journal (this machine's) each new
    inode is checked against the inodes freed in the last minutes, so the cost of a run would depend on what ran
    before it."""
    trash.mkdir(exist_ok=True)
    if path.exists():
        os.rename(path, trash / f"{len(list(trash.iterdir()))}")


def timed_ingest(run_: Run, slots: int, trash: Path) -> tuple[float, float, int]:
    """plan_shards, every extract (in this process when `slots` is 0, else one fresh process per shard, `slots` at
    a time) and finalize_source on a clean store: (wall seconds, CPU seconds, members)."""
    set_aside(run_.store.local_path("data"), trash)
    cpu, t = cpu_seconds(), time.perf_counter()
    shards = plan_shards(run_, "coco")
    if slots:

        def task(shard: str) -> int:
            args = [run_.settings.storage, run_.settings.catalog, shard, str(THREADS_PER_TASK)]
            cmd = [sys.executable, "-m", "bench.extract_task", *args]
            return int(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)

        with ThreadPoolExecutor(slots) as pool:
            members = sum(pool.map(task, shards))
    else:
        members = sum(r["members"] for r in extract_shards(run_, "coco", shards))
    finalize_source(run_, "coco")
    return time.perf_counter() - t, cpu_seconds() - cpu, members


def run(images: int = 5000, kb: int = 160, rounds: int = 3) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="mgdata-bench-ingest-"))
    cores = os.cpu_count() or 1
    try:
        replicas = build_mirror(work / "mirror", images_per_source=images, sources=["coco"])
        if kb:
            zip_path = work / "mirror" / replicas[0].relpath
            keep = {*replicas[0].broken_members, *replicas[0].normalized_members}
            resize_members(zip_path, photo_pool(kb), keep)
            replicas = [
                dataclasses.replace(replicas[0], size=zip_path.stat().st_size, sha256=sha256_file(zip_path))
            ]
        run_, zip_path = fetch_replica(work, replicas, "coco", shard_bytes=SHARD_BYTES)
        (work / "mirror" / replicas[0].relpath).unlink()  # the store holds its own copy now
        with zipfile.ZipFile(zip_path) as z:
            sizes = [i.file_size for i in z.infolist() if i.filename.lower().endswith(".jpg")]
        setup = (
            f"{len(sizes)} JPEGs, mean {sum(sizes) / len(sizes) / 1000:.0f} KB, zip {zip_path.stat().st_size / 1e6:.0f}"
            f" MB, {SHARD_BYTES // 2**20} MiB shards, local store"
        )

        got: dict[str, list[tuple[float, float, int]]] = {"slots": [], "serial": [], "baseline": []}

        def baseline() -> None:
            cpu = cpu_seconds()
            subprocess.run(["unzip", "-q", str(zip_path), "-d", str(work / "unzipped")], check=True)
            paths = sorted(p for p in (work / "unzipped").rglob("*") if p.is_file())
            decode_all(paths)
            got["baseline"].append((0.0, cpu_seconds() - cpu, len(paths)))
            set_aside(work / "unzipped", trash)

        trash = work / "trash"  # on the store's filesystem, so a rename moves a whole tree
        times = interleaved(
            {
                "slots": lambda: got["slots"].append(timed_ingest(run_, cores, trash)),
                "serial": lambda: got["serial"].append(timed_ingest(run_, 0, trash)),
                "baseline": baseline,
            },
            rounds,
            settle=os.sync,  # ours flushes the store once per shard: not the page cache the last tool left dirty
        )

        decoding, decoded = 0.0, 0
        with zipfile.ZipFile(zip_path) as z:  # one member in memory at a time; only the decode is timed
            for info in z.infolist():
                if info.filename.lower().endswith(".jpg"):
                    data = z.read(info)
                    t = time.perf_counter()
                    try:
                        with Image.open(io.BytesIO(data)) as im:
                            im.load()
                        decoded += 1
                    except (OSError, SyntaxError, ValueError):  # the replica's deliberately broken members
                        pass
                    decoding += time.perf_counter() - t
    finally:
        shutil.rmtree(work, ignore_errors=True)

    setup += f", load {loadavg()}"
    base_median = min_median(times["baseline"])[1]

    def row(tool: str, name: str) -> dict:
        lo, med = min_median(times[name])
        cpu = sum(c for _, c, _ in got[name]) / sum(t for t in times[name])
        count = got[name][0][2]
        per_image = sum(c for _, c, _ in got[name]) / sum(n for _, _, n in got[name]) * 1000
        out = {"tool": tool, "seconds": round(med, 2), "min s": round(lo, 2), "runs": len(times[name]),
               "images/s (median)": round(count / med), "CPU use (cores)": round(cpu, 2),
               "CPU ms per image": round(per_image, 2)}  # fmt: skip
        if name != "baseline":
            out["ours ÷ baseline (wall, median)"] = round(med / base_median, 2)
            out["(min ÷ min)"] = round(lo / min_median(times["baseline"])[0], 2)
        return out | {"setup": setup}

    return [
        row(f"ours, as the DAG's executor runs it: a process per shard, {cores} at a time", "slots"),
        row("ours, in one process (ingest_source: two shards at a time)", "serial"),
        row("baseline: unzip -q + 1-process Pillow decode + sha256", "baseline"),
        {"tool": "ceiling: in-memory Pillow decode, 1 thread", "seconds": round(decoding, 2),
         "images/s": round(decoded / decoding), "images/s per core": round(decoded / decoding), "setup": setup},
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument(
        "--kb", type=int, default=160, help="mean JPEG size; 0 keeps the replica's own (about 55 KB)"
    )
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    for row in run(args.images, args.kb, args.rounds):
        print(json.dumps(row, ensure_ascii=False))


if __name__ == "__main__":
    main()
