"""Decoding memory is bounded per extract task: nine 9400x9400 PNGs in a 2.5 MB zip, 4 threads.
Unbounded, each thread decoded one at once (4 x 353 MB, 1.4 GB peak); now the pixels being decoded are capped at
the per-image limit, so the task stays near one such image plus its baseline, well inside a 1 GiB pod."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_nine_huge_pngs_on_four_threads_stay_under_the_budget():
    out = subprocess.run(
        [sys.executable, "-m", "bench.decode_memory", "--images", "9", "--threads", "4"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "9 ok" in out, out
    peak = int(re.search(r"peak RSS (\d+) MB", out).group(1))
    assert peak < 640, out  # baseline (~90 MB) + one 88 Mpx decode (~350 MB) + members in flight; was ~1,400
