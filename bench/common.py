"""What several benchmarks set up the same way: a free loopback port, a server process waited for, and a sample
mirror replica served and fetched into a local store (the untimed part of the archive benchmarks)."""

from __future__ import annotations

import socket
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from mgdata.ingest import Run, fetch_file, plan_source
from mgdata.settings import Settings
from offline_mirror.build import ReplicaFile, write_catalog
from offline_mirror.server import MirrorServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cmd: list[str], url: str, what: str, *, method: str = "GET") -> subprocess.Popen:
    """Start `cmd` and return once `url` answers (10 s at most)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{what} did not start")


def fetch_replica(work: Path, replicas: list[ReplicaFile], source: str, **catalog_kw) -> tuple[Run, Path]:
    """Serve `work/mirror` on loopback and fetch `source` into `work/store`: the run (its catalog stays in the
    mirror folder) and the raw zip's path."""
    with MirrorServer(work / "mirror") as server:
        catalog = write_catalog(work / "mirror", server.base_url, replicas, **catalog_kw)
        run = Run(Settings(storage=(work / "store").as_uri(), catalog=str(catalog)), "bench")
        for f in plan_source(run, source):
            fetch_file(run, source, f["file"])
    return run, next((work / "store" / "raw" / source).glob("*.zip"))


def loadavg() -> str:
    """The 1/5/15-minute load averages, noted beside every figure (the machine is shared)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def interleaved(
    tools: dict[str, Callable[[], object]], rounds: int = 3, *, settle: Callable[[], object] | None = None
) -> dict[str, list[float]]:
    """Wall seconds of every tool, `rounds` times, interleaved (round r starts with tool r mod n, so no tool always
    runs first or right after the same neighbour): a load spike on a shared machine hits every tool alike.
    `settle` runs, untimed, before each tool (e.g. `os.sync`, so no tool flushes what the one before it wrote)."""
    names = list(tools)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if settle is not None:
                settle()
            t = time.perf_counter()
            tools[name]()
            times[name].append(time.perf_counter() - t)
    return times


def min_median(seconds: list[float]) -> tuple[float, float]:
    return min(seconds), statistics.median(seconds)
