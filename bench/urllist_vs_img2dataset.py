"""The URL-list fetcher (OCR-VQA's path) against img2dataset, on the same 20K-URL list served on loopback.

    .venv/bin/python -m bench.urllist_vs_img2dataset [--urls 20000] [--img2dataset PATH] [--workers 32]

A loopback image host serves 20,000 cover URLs (a pool of 400 distinct covers of ~25-60 KB behind distinct URLs,
like OCR-VQA's Amazon host: 92% JPEG, 3% GIF, 3% PNG, 2% dead with 404). Both tools fetch the same list in the same
run on the same machine:

* ours: `mgdata.fetch.urllist.ingest_urls` into a local store (threads, per-host limit set to the thread count so
  the one loopback host is not throttled; every image fully decoded, GIF/PNG re-encoded to JPEG, manifest rows);
* img2dataset (from PyPI, in its own venv: it pins old dependencies, so it never enters requirements*.txt), with
  resizing off and re-encoding off, `--processes_count 2` (this machine's cores) and `--thread_count` as given. Ours runs as two processes too (two
mapped extract tasks side by side, as Airflow runs them), each on half the list. The server has its own process.

Prints images/s of both and the ratio. img2dataset's venv: `python3 -m venv /tmp/i2d-venv &&
/tmp/i2d-venv/bin/pip install img2dataset`, then pass `--img2dataset /tmp/i2d-venv/bin/img2dataset`.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import random
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image

from mgdata.fetch.urllist import FetchPolicy, ingest_urls
from mgdata.mirror.media import PhotoPool, to_gif
from mgdata.mirror.server import MirrorServer
from mgdata.storage import LocalStore

POOL = 400


def make_covers(root: Path, seed: int = 0) -> list[str]:
    """POOL distinct covers under root/covers/; returns their file names (index i -> names[i % POOL])."""
    rng = random.Random(f"bench.urllist:{seed}")
    pool = PhotoPool(rng, POOL)
    (root / "covers").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(POOL):
        cover = pool.image().resize((rng.randint(300, 500), rng.randint(450, 700)))
        if i % 33 == 7:
            name, data = f"{i}.gif", to_gif(cover)
        elif i % 33 == 19:
            buf = io.BytesIO()
            cover.save(buf, "PNG", compress_level=1)
            name, data = f"{i}.png", buf.getvalue()
        else:
            buf = io.BytesIO()
            cover.save(buf, "JPEG", quality=80)
            name, data = f"{i}.jpg", buf.getvalue()
        (root / "covers" / name).write_bytes(data)
        names.append(name)
    return names


def cover_route(root: Path, names: list[str]):
    """`/img/<n>.<ext>` serves cover n % POOL; every 50th URL is dead (404)."""

    def route(handler, relpath: str, method: str) -> None:
        n = int(relpath.split("/")[-1].split("-")[0])
        if n % 50 == 49:
            handler._simple(404, method == "HEAD")
            return
        handler.send_path(root / "covers" / names[n % POOL], head=method == "HEAD")

    return route


def _ingest_part(args: tuple) -> int:
    items, store_dir, workers = args
    policy = FetchPolicy(workers=workers, per_host=workers, attempts=1, timeout=10)
    rows = ingest_urls(LocalStore(store_dir), "bench", "bench/images", items, run_id="bench", policy=policy)
    return sum(r["status"] in ("ok", "normalized") for r in rows)


def run_ours(items: list[tuple[str, str]], work: Path, workers: int, processes: int) -> tuple[float, int]:
    """`processes` extract tasks at once (as Airflow runs mapped shards side by side), each on its slice."""
    parts = [(items[i::processes], work / "store", workers) for i in range(processes)]
    began = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        ok = sum(pool.map(_ingest_part, parts))
    return time.perf_counter() - began, ok


def _serve(root: Path, names: list[str], ready) -> None:
    server = MirrorServer(root, routes=[("img/", cover_route(root, names))]).start()
    ready.put(server.base_url)
    threading.Event().wait()  # until the parent terminates this process


def run_img2dataset(
    exe: str, items: list[tuple[str, str]], work: Path, threads: int, processes: int
) -> tuple[float, int]:
    urls = work / "urls.txt"
    urls.write_text("".join(f"{u}\n" for _, u in items))
    out = work / "i2d"
    cmd = [
        exe, "--url_list", str(urls), "--input_format", "txt", "--output_folder", str(out),
        "--output_format", "files", "--resize_mode", "no", "--disable_all_reencoding", "True",
        "--processes_count", str(processes), "--thread_count", str(threads), "--number_sample_per_shard", "1000",
        "--timeout", "10", "--retries", "0", "--enable_wandb", "False",
    ]  # fmt: skip
    began = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    ok = sum(json.loads(p.read_text())["successes"] for p in out.glob("*_stats.json"))
    return seconds, ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--urls", type=int, default=20_000)
    ap.add_argument("--workers", type=int, default=32, help="our threads; img2dataset threads per process")
    ap.add_argument(
        "--processes", type=int, default=2, help="both tools: processes (this machine has 2 cores)"
    )
    ap.add_argument("--img2dataset", default="/tmp/i2d-venv/bin/img2dataset")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mgdata-bench-urllist-"))
    names = make_covers(work / "root")
    # The server runs in its own process, so neither client shares a GIL with it.
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    server = ctx.Process(target=_serve, args=(work / "root", names, ready), daemon=True)
    server.start()
    try:
        base = ready.get(timeout=60)
        items = [(str(i), f"{base}/img/{i}-{names[i % POOL]}") for i in range(args.urls)]
        ours = run_ours(items, work, args.workers, args.processes)
        theirs = run_img2dataset(args.img2dataset, items, work, args.workers, args.processes)
    finally:
        server.terminate()
    rate_ours, rate_theirs = ours[1] / ours[0], theirs[1] / theirs[0]
    print(f"URLs: {args.urls} ({sum(1 for i in range(args.urls) if i % 50 == 49)} dead), work dir {work}")
    print(
        f"ours        {ours[1]:6d} images in {ours[0]:6.1f} s = {rate_ours:7.0f} images/s  (full decode, real JPEG)"
    )
    print(
        f"img2dataset {theirs[1]:6d} images in {theirs[0]:6.1f} s = {rate_theirs:7.0f} images/s  (no resize, no re-encode)"
    )
    print(f"ratio ours / img2dataset = {rate_ours / rate_theirs:.2f}")
    with Image.open(next((work / "store" / "data" / "bench" / "images").iterdir())) as im:
        assert im.format == "JPEG"


if __name__ == "__main__":
    main()
