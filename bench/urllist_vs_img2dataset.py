"""The URL-list fetcher (OCR-VQA's path) against img2dataset, on the same URL list served on loopback.

    .venv/bin/python -m bench.urllist_vs_img2dataset [--urls 10000] [--workers 32] [--rounds 3]

A loopback image host serves `--urls` cover URLs (a pool of 400 distinct covers of ~25-60 KB behind distinct URLs,
like OCR-VQA's Amazon host: 92% JPEG, 3% GIF, 3% PNG, 2% dead with 404): Debian's nginx when it is installed (run()
installs it with apt when missing and it runs as root; benchmark only), else our mirror server, in its own process
either way. Interleaved `--rounds` times, in the same run:

* ours: `mgdata.fetch.urllist.ingest_urls` into a local store, as two processes (two mapped extract tasks side by
  side, as Airflow runs them) of `--workers` threads, each on half the list (per-host limit set to the thread count so
  the one loopback host is not throttled; every image fully decoded, GIF/PNG re-encoded to JPEG, manifest rows);
* img2dataset decoding, the same work: `--resize_mode no --encode_format jpg --skip_reencode True` (every image
  decoded with OpenCV, re-encoded only when it is not a JPEG);
* img2dataset not decoding: `--disable_all_reencoding True` (it writes the bytes it received: less work than ours).

Both img2dataset runs use `--processes_count 2 --thread_count` = `--workers` (2 x 32: its best on 2 cores). It comes
from PyPI into its own venv (it pins old dependencies, so it never enters requirements*.txt): created at
`/tmp/i2d-venv` on first use, or pass `--img2dataset PATH`. Prints min and median seconds, images/s, CPU seconds per
10K images (from the children's rusage) and ours ÷ each in images/s (from medians).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from PIL import Image

from bench.common import free_port, interleaved, loadavg, min_median, start_server
from mgdata.fetch.urllist import FetchPolicy, ingest_urls
from mgdata.storage import LocalStore
from offline_mirror.media import PhotoPool, to_gif
from offline_mirror.server import MirrorServer

I2D_VENV = Path("/tmp/i2d-venv")
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


def run_ours(items: list[tuple[str, str]], store: Path, workers: int, processes: int) -> int:
    """`processes` extract tasks at once (as Airflow runs mapped shards side by side), each on its slice."""
    shutil.rmtree(store, ignore_errors=True)
    parts = [(items[i::processes], store, workers) for i in range(processes)]
    with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
        return sum(pool.map(_ingest_part, parts))


def run_img2dataset(exe: str, urls: Path, out: Path, threads: int, processes: int, *, decode: bool) -> int:
    shutil.rmtree(out, ignore_errors=True)
    work = (
        ["--resize_mode", "no", "--encode_format", "jpg", "--skip_reencode", "True"]
        if decode
        else ["--resize_mode", "no", "--disable_all_reencoding", "True"]
    )
    cmd = [
        exe, "--url_list", str(urls), "--input_format", "txt", "--output_folder", str(out), "--output_format",
        "files", *work, "--processes_count", str(processes), "--thread_count", str(threads),
        "--number_sample_per_shard", "1000", "--timeout", "10", "--retries", "0", "--enable_wandb", "False",
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return sum(json.loads(p.read_text())["successes"] for p in out.glob("*_stats.json"))


def img2dataset() -> str:
    exe = I2D_VENV / "bin" / "img2dataset"
    if not exe.exists():
        subprocess.run(["python3", "-m", "venv", str(I2D_VENV)], check=True)
        subprocess.run([str(I2D_VENV / "bin" / "pip"), "install", "-q", "img2dataset"], check=True)
    return str(exe)


def nginx() -> str | None:
    if shutil.which("nginx") is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "nginx-light"], check=False, capture_output=True)
    return shutil.which("nginx") or (os.path.exists("/usr/sbin/nginx") and "/usr/sbin/nginx") or None


def serve_nginx(exe: str, root: Path, names: list[str], count: int) -> tuple[subprocess.Popen, str]:
    """nginx on a static tree: `img/<n>-<name>` hard links to cover n % POOL; every 50th is absent (404)."""
    (root / "img").mkdir(exist_ok=True)
    root.parent.chmod(0o755)  # mkdtemp's 0700 would keep nginx's unprivileged worker out
    for n in range(count):
        if n % 50 != 49:
            os.link(root / "covers" / names[n % POOL], root / "img" / f"{n}-{names[n % POOL]}")
    port = free_port()
    prefix = root.parent / "nginx"
    prefix.mkdir(exist_ok=True)
    (prefix / "nginx.conf").write_text(
        f"worker_processes 1; daemon off; pid {prefix}/nginx.pid; error_log stderr error;\n"
        "events { worker_connections 1024; }\n"
        f"http {{ access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;\n"
        f"  client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy;\n"
        f"  fastcgi_temp_path {prefix}/fastcgi; uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;\n"
        f"  server {{ listen 127.0.0.1:{port}; root {root}; }} }}\n"
    )
    base = f"http://127.0.0.1:{port}"
    cmd = [exe, "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
    return start_server(cmd, f"{base}/img/0-{names[0]}", "nginx"), base


def _serve(root: Path, names: list[str], ready) -> None:
    server = MirrorServer(root, routes=[("img/", cover_route(root, names))]).start()
    ready.put(server.base_url)
    threading.Event().wait()  # until the parent terminates this process


def child_cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime


def run(
    urls: int = 10_000, workers: int = 32, processes: int = 2, rounds: int = 3, exe: str | None = None
) -> list[dict]:
    exe = exe or img2dataset()
    work = Path(tempfile.mkdtemp(prefix="mgdata-bench-urllist-"))
    names = make_covers(work / "root")
    server = None
    try:
        if web := nginx():
            server, base = serve_nginx(web, work / "root", names, urls)
            host = "nginx"
        else:  # the mirror server in a process of its own, so no client shares a GIL with it
            ctx = get_context("spawn")
            ready = ctx.Queue()
            server = ctx.Process(target=_serve, args=(work / "root", names, ready), daemon=True)
            server.start()
            base, host = ready.get(timeout=60), "our mirror server"
        items = [(str(i), f"{base}/img/{i}-{names[i % POOL]}") for i in range(urls)]
        (work / "urls.txt").write_text("".join(f"{u}\n" for _, u in items))
        ok: dict[str, int] = {}
        cpu: dict[str, float] = {}

        def tool(name: str, fn):
            def go() -> None:
                c = child_cpu()
                ok[name] = fn()
                cpu[name] = cpu.get(name, 0.0) + child_cpu() - c

            return go

        times = interleaved({
            "ours": tool("ours", lambda: run_ours(items, work / "store", workers, processes)),
            "i2d-decode": tool("i2d-decode", lambda: run_img2dataset(
                exe, work / "urls.txt", work / "i2d", workers, processes, decode=True)),
            "i2d-raw": tool("i2d-raw", lambda: run_img2dataset(
                exe, work / "urls.txt", work / "i2d", workers, processes, decode=False)),
        }, rounds)  # fmt: skip
        with Image.open(next((work / "store" / "data" / "bench" / "images").iterdir())) as im:
            assert im.format == "JPEG"
    finally:
        if server is not None:
            server.terminate()
        shutil.rmtree(work, ignore_errors=True)
    setup = f"{urls} URLs ({urls // 50} dead), {host} on loopback, load {loadavg()}"
    ours_min, ours_median = min_median(times["ours"])
    labels = {
        "ours": f"ours: ingest_urls, {processes} processes x {workers} threads (full decode, real JPEG)",
        "i2d-decode": f"img2dataset {processes}x{workers}, decoding (same work)",
        "i2d-raw": f"img2dataset {processes}x{workers}, not decoding (less work)",
    }
    rows = []
    for name, label in labels.items():
        lo, med = min_median(times[name])
        row = {"tool": label, "seconds": round(med, 2), "min s": round(lo, 2), "runs": len(times[name]),
               "images": ok[name], "images/s (median)": round(ok[name] / med),
               "CPU s per 10K images": round(cpu[name] / len(times[name]) / ok[name] * 10_000, 1)}  # fmt: skip
        if name != "ours":
            row["ours ÷ this (images/s)"] = round(ok["ours"] / ours_median / (ok[name] / med), 2)
            row["(by min)"] = round(ok["ours"] / ours_min / (ok[name] / lo), 2)
        rows.append(row | {"setup": setup})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--urls", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=32, help="our threads; img2dataset threads per process")
    ap.add_argument(
        "--processes", type=int, default=2, help="both tools: processes (this machine has 2 cores)"
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--img2dataset", default=None, help="its executable (default: /tmp/i2d-venv, made on first use)"
    )
    args = ap.parse_args()
    for row in run(args.urls, args.workers, args.processes, args.rounds, args.img2dataset):
        print(json.dumps(row, ensure_ascii=False))


if __name__ == "__main__":
    main()
