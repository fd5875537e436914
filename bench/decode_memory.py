"""Peak memory of one extract task over huge images: a zip of nine 9400x9400 PNGs (88 Mpx each, just under the
per-image pixel limit; one colour, so the zip is about 2.5 MB), extracted by `mgdata.extract` with 4 threads into a
local store, in a fresh process; prints the process's peak RSS.

    .venv/bin/python -m bench.decode_memory [--images 9] [--side 9400] [--threads 4]

`MGDATA_DECODE_MPIXELS` sets the pixel budget under test (default: the per-image limit, 89.5 Mpx).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from PIL import Image

from bench.rss import peak_rss_mb
from mgdata.extract import extract, shard_file
from mgdata.run import Run, raw_key
from mgdata.settings import Settings
from mgdata.storage import LocalStore


def build_zip(images: int, side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (40, 90, 200)).save(buf, "PNG")
    png = buf.getvalue()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for i in range(images):
            zf.writestr(f"ai2d/images/huge{i}.png", png)
    return out.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=9)
    ap.add_argument("--side", type=int, default=9400)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--build", type=Path, help="(internal) write the zip here and exit")
    args = ap.parse_args()
    if args.build is not None:
        args.build.write_bytes(build_zip(args.images, args.side))
        return
    tmp_zip = Path(tempfile.mkdtemp()) / "huge.zip"
    # Built in another process: encoding a 9400x9400 image would otherwise be this process's peak (and a process
    # forked from this one would inherit it as its ru_maxrss).
    subprocess.run(
        [sys.executable, "-m", "bench.decode_memory", *sys.argv[1:], "--build", str(tmp_zip)], check=True
    )
    data = tmp_zip.read_bytes()
    shutil.rmtree(tmp_zip.parent)
    os.environ["MGDATA_EXTRACT_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = LocalStore(root / "store")
        # the shipped catalog's AI2D entry (member_prefix ai2d/images/); the archive is put in place, not fetched
        run = Run(Settings.from_env({"storage": store.url}), "bench", _store=store)
        f = run.file("ai2d", "ai2d-all.zip")
        store.put_bytes(raw_key("ai2d", f.name), data)
        before = peak_rss_mb()
        started = time.perf_counter()
        counts = [extract(run, "ai2d", shard) for shard in shard_file(run, "ai2d", f)]
        seconds = time.perf_counter() - started
    peak = peak_rss_mb()
    ok = sum(c["ok"] for c in counts)
    print(
        f"{args.images} PNGs {args.side}x{args.side} ({len(data) / 1e6:.1f} MB zip), {args.threads} threads: "
        f"{ok} ok in {seconds:.1f} s; peak RSS {peak:.0f} MB (before extract {before:.0f} MB)"
    )


if __name__ == "__main__":
    main()
