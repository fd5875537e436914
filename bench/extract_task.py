"""One mapped extract task's work in a fresh process, as an executor slot runs it:

    python -m bench.extract_task STORAGE CATALOG SHARD THREADS    (prints the members it took)

A module of its own, run as a fresh interpreter, so the process imports what a task process imports (the pipeline,
Pillow, pyarrow, pydantic) and not the benchmark's mirror and server code."""

from __future__ import annotations

import os
import sys


def main() -> None:
    storage, catalog, shard, threads = sys.argv[1:5]
    os.environ["MGDATA_EXTRACT_THREADS"] = threads
    from mgdata.ingest import Run, extract_shard
    from mgdata.settings import Settings

    print(extract_shard(Run(Settings(storage=storage, catalog=catalog), "bench"), "coco", shard)["members"])


if __name__ == "__main__":
    main()
