"""Large-file fetch against a loopback server that caps each connection's rate, and against one that does not: ours
(the default, connections chosen adaptively) vs aria2c at its best flags, with and without its checksum.

    .venv/bin/python -m bench.large_fetch [--size-mib 1024] [--rate-mib 20] [--rounds 3] [--curl]

Writes one random file and serves it with `python -m offline_mirror.server` in its own process (so the server does not
share our GIL), first with `--rate-limit` (bytes per second per connection, as slow academic mirrors do), then
without. Against each server, interleaved `--rounds` times:

- ours: `fetch_to_store` with its defaults into a LocalStore (parallel ranged GETs, connections grown while the
  throughput grows, sha256 verified while streaming, fsync'd and renamed into place);
- ours with a fixed 8 connections (the earlier default), for reference;
- `aria2c -x16 -s16 -k1M --file-allocation=falloc` (its best settings here), without a checksum: it does less work
  than ours;
- the same with `--checksum=sha-256=...`: the same work as ours (aria2c hashes after the download).

`--curl` adds one plain `curl` run per server (one connection). aria2c is Debian's `aria2` package, benchmark only:
`apt-get install -y aria2` (run() installs it when missing and it runs as root).
Prints min and median seconds per tool and ours ÷ each peer's throughput (from medians).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import free_port, interleaved, loadavg, min_median, start_server
from mgdata.fetch.http import fetch_to_store
from mgdata.storage import LocalStore, MiB

ARIA2C_BEST = ["-x16", "-s16", "-k1M", "--file-allocation=falloc"]


def aria2c() -> str | None:
    """Debian's aria2c, installed with apt when missing and we may (benchmark only; CI never runs bench)."""
    if shutil.which("aria2c") is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "aria2"], check=False, capture_output=True)
    return shutil.which("aria2c")


def write_file(path: Path, size: int) -> str:
    """Random bytes (incompressible, like a zip of JPEGs); returns the sha256."""
    h = hashlib.sha256()
    block = os.urandom(4 * MiB)
    with open(path, "wb") as f:
        for i in range(0, size, len(block)):
            chunk = (block[: size - i] if size - i < len(block) else block) + b""
            chunk = i.to_bytes(8, "little") + chunk[8:]  # no two blocks alike
            f.write(chunk)
            h.update(chunk)
    return h.hexdigest()


def serve(root: Path, rate: int | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "offline_mirror.server", str(root), "--port", str(port)]
    if rate:
        cmd += ["--rate-limit", str(rate)]
    base = f"http://127.0.0.1:{port}"
    return start_server(cmd, base + "/big.bin", "the loopback server", method="HEAD"), base


def quiet(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def against(work: Path, size: int, sha256: str, rate: int | None, rounds: int, curl: bool) -> list[dict]:
    """Every tool against one server (capped at `rate` per connection, or not), interleaved."""
    proc, base = serve(work / "srv", rate)
    url = f"{base}/big.bin"
    connections_used: list[int] = []

    def ours(connections: int | None = None):
        def fetch() -> None:
            shutil.rmtree(work / "store", ignore_errors=True)
            r = fetch_to_store(
                [url], LocalStore(work / "store"), "raw/big.bin", label="big", size=size,
                checksums={"sha256": sha256}, connections=connections, log=lambda _msg: None,
            )  # fmt: skip
            assert r.sha256 == sha256
            if connections is None:
                connections_used.append(r.connections)

        return fetch

    def aria(*extra: str):
        def fetch() -> None:
            quiet(["aria2c", *ARIA2C_BEST, *extra, "-q", "--allow-overwrite=true", "-d", str(work / "aria"),
                   "-o", "big.bin", url])  # fmt: skip

        return fetch

    tools = {"ours (default)": ours(), "ours, 8 connections (fixed)": ours(8)}
    if aria2c():
        tools["aria2c " + " ".join(ARIA2C_BEST)] = aria()
        tools["aria2c ... + --checksum=sha-256"] = aria(f"--checksum=sha-256={sha256}")
    try:
        times = interleaved(tools, rounds)
        if curl:
            times["curl (one connection, one run)"] = list(
                interleaved({"curl": lambda: quiet(["curl", "-sS", "-o", str(work / "curl.bin"), url])}, 1)[
                    "curl"
                ]
            )
    finally:
        proc.terminate()
        proc.wait()
    setup = (
        f"{size // MiB} MiB file, loopback, "
        + (f"{rate / MiB:g} MiB/s per connection" if rate else "no rate cap")
        + f", load {loadavg()}"
    )
    ours_min, ours_median = min_median(times["ours (default)"])
    rows = []
    for tool, secs in times.items():
        lo, med = min_median(secs)
        row = {"tool": tool, "seconds": round(med, 2), "min s": round(lo, 2), "runs": len(secs),
               "MB/s (median)": round(size / med / 1e6, 1),
               "ours ÷ this (throughput)": round(med / ours_median, 2), "(by min)": round(lo / ours_min, 2),
               "setup": setup}  # fmt: skip
        if tool == "ours (default)":
            row["connections"] = connections_used
        rows.append(row)
    return rows


def run(size_mib: int = 1024, rate_mib: float = 20, rounds: int = 3, curl: bool = False) -> list[dict]:
    size = size_mib * MiB
    work = Path(tempfile.mkdtemp(prefix="mgdata-bench-fetch-"))
    try:
        (work / "srv").mkdir()
        sha256 = write_file(work / "srv" / "big.bin", size)
        rows = against(work, size, sha256, int(rate_mib * MiB), rounds, curl)
        return rows + against(work, size, sha256, None, rounds, curl)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument(
        "--rate-mib", type=float, default=20, help="the capped server's limit per connection (MiB/s)"
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--curl", action="store_true", help="add one plain curl run per server")
    args = ap.parse_args()
    for row in run(args.size_mib, args.rate_mib, args.rounds, args.curl):
        print(json.dumps(row, ensure_ascii=False))


if __name__ == "__main__":
    main()
