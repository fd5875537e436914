"""The layout holds nothing per file while it places them: at the corpus's 2.07M files a future (or a result) per
file kept until the end cost gigabytes in `assemble` (the rehearsal measured 1.65 KB per file)."""

from __future__ import annotations

import sys
import tracemalloc

from mgdata.layout import materialize
from mgdata.storage import LocalStore


def test_placing_files_keeps_no_state_per_file(tmp_path):
    store = LocalStore(tmp_path / "store")
    folder = tmp_path / "store" / "data" / "coco" / "train2017"
    folder.mkdir(parents=True)
    files = []
    for i in range(20_000):
        (folder / f"{i:06d}.jpg").write_bytes(b"x")
        files.append((f"coco/train2017/{i:06d}.jpg", 1))
    wanted = {
        p for p, _ in files
    }  # what materialize builds for the sweep: the one per-file structure allowed
    tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    out = materialize(store, tmp_path / "data", files, ["coco/train2017"])
    peak = tracemalloc.get_traced_memory()[1] - baseline
    tracemalloc.stop()
    assert out["linked"] == 20_000 and (tmp_path / "data/coco/train2017/019999.jpg").is_file()
    allowed = (
        sys.getsizeof(wanted) + 4 * 2**20
    )  # the sweep's set of paths (the strings are shared) + headroom
    assert peak < allowed, f"{peak / 2**20:.1f} MiB traced for 20,000 files (allowed {allowed / 2**20:.1f})"
