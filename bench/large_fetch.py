"""Large-file fetch against a loopback server that caps each connection's rate: ours vs `aria2c -x8 -s8` vs `curl`.

    .venv/bin/python -m bench.large_fetch [--size-mib 256] [--rate-mib 8] [--connections 8]

Writes one random file, serves it with `python -m mgdata.mirror.server --rate-limit` in its own process (so the server
does not share our GIL), then in the same run downloads it three times: `fetch_to_store` into a LocalStore (parallel
ranged GETs, sha256 verified, fsync'd and renamed into place), `aria2c -x8 -s8` (sha-256 verified with --checksum) and
plain `curl`. Prints one JSON line per tool and the ratios. aria2c is Debian's `aria2` package, benchmark only.
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
import time
from pathlib import Path

from bench.common import free_port, start_server
from mgdata.fetch.http import fetch_to_store
from mgdata.storage import LocalStore, MiB


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


def serve(root: Path, rate: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "mgdata.mirror.server",
        str(root),
        "--port",
        str(port),
        "--rate-limit",
        str(rate),
    ]
    base = f"http://127.0.0.1:{port}"
    return start_server(cmd, base + "/big.bin", "the loopback server", method="HEAD"), base


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def run(size_mib: int = 256, rate_mib: float = 8, connections: int = 8) -> list[dict]:
    size, rate = size_mib * MiB, int(rate_mib * MiB)
    work = Path(tempfile.mkdtemp(prefix="mgdata-bench-fetch-"))
    results = []
    try:
        (work / "srv").mkdir()
        sha256 = write_file(work / "srv" / "big.bin", size)
        proc, base = serve(work / "srv", rate)
        url = f"{base}/big.bin"
        try:
            store = LocalStore(work / "store")
            t = time.perf_counter()
            r = fetch_to_store(
                [url], store, "raw/big.bin", label="big", size=size, checksums={"sha256": sha256},
                connections=connections, log=lambda _msg: None,
            )  # fmt: skip
            ours = time.perf_counter() - t
            assert r.sha256 == sha256
            results.append({"tool": f"ours ({connections} connections)", "seconds": ours})
            if shutil.which("aria2c"):
                aria = timed([
                    "aria2c", "-x8", "-s8", "-q", "--allow-overwrite=true", f"--checksum=sha-256={sha256}",
                    "-d", str(work / "aria"), "-o", "big.bin", url,
                ])  # fmt: skip
                results.append({"tool": "aria2c -x8 -s8", "seconds": aria})
            curl = timed(["curl", "-sS", "-o", str(work / "curl.bin"), url])
            results.append({"tool": "curl", "seconds": curl})
        finally:
            proc.terminate()
            proc.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for row in results:
        row["MB/s"] = round(size / row["seconds"] / 1e6, 1)
        row["seconds"] = round(row["seconds"], 2)
        row["ratio ours/this"] = round(row["seconds"] / results[0]["seconds"], 2)
        row["setup"] = f"{size_mib} MiB file, {rate_mib:g} MiB/s per connection, loopback"
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--rate-mib", type=float, default=8, help="the server's cap per connection (MiB/s)")
    ap.add_argument("--connections", type=int, default=8)
    args = ap.parse_args()
    for row in run(args.size_mib, args.rate_mib, args.connections):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
