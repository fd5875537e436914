"""`python -m mgdata verify --fast` over MG-LLaVA's two training JSONs at their full sample counts, on 2 cores.

    .venv/bin/python -m bench.verify_both [--scale 1] [--rounds 3] [--work DIR] [--mgdata DIR]

Builds (once per scale, kept in `--work`) the pretrain and instruct JSONs at 1,266K and 1,383K samples x scale through
the rehearsal mirror's generator (`offline_mirror.rehearsal.build_training_jsons`: the real files' shape, int and str
ids, text-only samples, multi-turn conversations) with their bbox JSONs, and a data/ folder holding every cited image
as an empty file under the catalog's layout prefixes (about 2.07M files at scale 1). `--fast` only asks whether each
file exists, so empty files give it the work it does on the real tree; the bench measures nothing else (opening every
image is the DAG's `verify` task, in the rehearsal's stage table).

Then times, in child processes, each JSON checked by its own `verify --fast` command one after the other, and both
checked by one command (one process per JSON), `--rounds` times interleaved (median and minimum, as the machine is
shared), and compares each file's part of the reports. Peak RSS is each command's own
(VmHWM) and its worker processes' (`RUSAGE_CHILDREN`, the largest of them). `--mgdata DIR` runs the commands
with DIR (a folder holding another checkout's `mgdata` package) first on the path, to compare two versions.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from bench.common import interleaved, loadavg, min_median
from offline_mirror import rehearsal, training_json

# images per layout prefix in the full corpus (offline_mirror.rehearsal's archives)
IMAGES = {
    "coco/train2017": 118_287,
    "gqa/images": 148_854,
    "textvqa/train_images": 25_119,
    "vg/VG_100K": 64_346,
    "vg/VG_100K_2": 43_903,
    "ai2d/images": 4_903,
    "LLaVA-Pretrain/images": 558_128,
    "allava_laion/images": 505_588,
    "allava_vflan/images": 181_393,
    "share_textvqa/images": 500,
    "web-celebrity/images": 498,
    "web-landmark/images": 500,
    "wikiart/images": 500,
    "dvqa/images": 200_000,
    "ocr_vqa/images": 207_572,
    "docvqa/images": 10_194,
}
NAMES = (training_json.PRETRAIN_JSON, training_json.INSTRUCT_JSON)
WORK = Path("/tmp/mgdata-bench-verify")


def image_paths(scale: float) -> dict[str, list[str]]:
    """Every prefix's images, named as its archive names them (LLaVA-Pretrain in folders of 10,000)."""
    out = {}
    for prefix, count in IMAGES.items():
        n = max(1, round(count * scale))
        if prefix == "LLaVA-Pretrain/images":
            out[prefix] = [f"{prefix}/{i // 10_000:05d}/{i:09d}.jpg" for i in range(n)]
        else:
            out[prefix] = [f"{prefix}/{i:012d}.jpg" for i in range(n)]
    return out


def write_json_list(path: Path, items) -> None:
    with open(path, "w") as f:
        f.write("[")
        for i, item in enumerate(items):
            f.write(("," if i else "") + json.dumps(item))
        f.write("]")


def write_pair(folder: Path, name: str, samples: list[dict], rng: random.Random) -> None:
    write_json_list(folder / name, samples)
    by_id = {s["id"]: None for s in samples if "image" in s}
    write_json_list(
        folder / training_json.box_json_name(name), (training_json.box_entry(rng, i) for i in by_id)
    )


def write_data(data: Path, paths: dict[str, list[str]]) -> int:
    """An empty file for every image: what `--fast` asks about (existence) is what the real tree answers."""
    made = 0
    for files in paths.values():
        folders = {p.rsplit("/", 1)[0] for p in files}
        for folder in sorted(folders):
            (data / folder).mkdir(parents=True, exist_ok=True)
        for p in files:
            os.close(os.open(data / p, os.O_WRONLY | os.O_CREAT, 0o644))
            made += 1
    return made


def build(work: Path, scale: float) -> Path:
    """`work/<scale>/` with both JSON pairs and data/; reused when a finished build of this scale is there."""
    root = work / f"scale-{scale:g}"
    done = root / "built.json"
    if done.is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    paths = image_paths(scale)
    rng = random.Random(f"bench.verify_both:{scale}")
    jsons = rehearsal.build_training_jsons(paths, rng, scale)
    write_pair(root, training_json.PRETRAIN_JSON, jsons.pretrain, rng)
    write_pair(root, training_json.INSTRUCT_JSON, jsons.instruct, rng)
    samples = {
        training_json.PRETRAIN_JSON: len(jsons.pretrain),
        training_json.INSTRUCT_JSON: len(jsons.instruct),
    }
    del jsons
    files = write_data(root / "data", paths)
    done.write_text(json.dumps({"scale": scale, "samples": samples, "files": files}))
    return root


def verify_args(root: Path, names: tuple[str, ...]) -> list[str]:
    args = ["verify", "--fast", "--data", str(root / "data")]
    for name in names:
        args += ["--json", str(root / name), "--boxes", str(root / training_json.box_json_name(name))]
    return args


# `python -m mgdata` that also writes its own peak RSS (bench.rss: VmHWM, as ru_maxrss would carry the benchmark's size
# across exec) and its workers' (the largest), importing nothing else
CHILD = """import json, resource, sys
from bench.rss import peak_rss_mb
from mgdata.__main__ import main
code = main(sys.argv[2:])
peak = {"self_mb": round(peak_rss_mb()),
        "workers_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)}
open(sys.argv[1], "w").write(json.dumps(peak))
sys.exit(code)
"""


def timed(args: list[str], report: Path, mgdata: Path | None) -> dict:
    """One `python -m mgdata` command in a child, timed, with its peak RSS (`CHILD`)."""
    env = dict(os.environ)
    if mgdata is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(mgdata), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-c", CHILD, f"{report}.rss", *args, "--report", str(report)]
    began = time.perf_counter()
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1]
    )
    seconds = time.perf_counter() - began
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"verify failed ({proc.returncode}): {proc.stderr[-2000:]}")
    rss = json.loads(Path(f"{report}.rss").read_text())
    return {
        "seconds": round(seconds, 1),
        "exit": proc.returncode,
        **rss,
        "report": json.loads(report.read_text()),
    }


def comparable(report: dict) -> dict:
    """A report without its timings (each file's `seconds`)."""
    return {**report, "files": [{k: v for k, v in f.items() if k != "seconds"} for f in report["files"]]}


def run(
    scale: float = 1.0, work: Path | None = None, mgdata: Path | None = None, rounds: int = 3
) -> list[dict]:
    """Both ways, `rounds` times interleaved (`bench.common.interleaved`): min and median wall seconds."""
    root = build(work or WORK, scale)
    built = json.loads((root / "built.json").read_text())
    setup = (
        f"{' + '.join(f'{n:,}' for n in built['samples'].values())} samples, {built['files']:,} empty image files"
        + (f", mgdata from {mgdata}" if mgdata else "")
    )
    last: dict[str, list[dict]] = {}

    def in_turn() -> None:
        last["in turn"] = [
            timed(verify_args(root, (n,)), root / f"report-{i}.json", mgdata) for i, n in enumerate(NAMES)
        ]

    def at_once() -> None:
        last["at once"] = [timed(verify_args(root, NAMES), root / "report-both.json", mgdata)]

    times = interleaved({"in turn": in_turn, "at once": at_once}, rounds)
    alone = [comparable(r["report"])["files"][0] for r in last["in turn"]]
    both = last["at once"][0]
    rows = [
        {
            "tool": "verify --fast, one command per JSON, in turn",
            **_seconds(times["in turn"]),
            "peak RSS MB": max(r["self_mb"] for r in last["in turn"]),
        },
        {"tool": "verify --fast, both JSONs in one command", **_seconds(times["at once"])},
    ]
    files = comparable(both["report"])["files"]
    if len(files) != len(NAMES):  # a version whose --json is not repeatable checks only the last
        rows[1]["note"] = f"this version checked {len(files)} of the {len(NAMES)} JSONs"
    else:
        rows[1]["peak RSS MB"] = f"{both['self_mb']} parent, {both['workers_mb']} largest worker"
        rows[1]["same files as in turn"] = files == alone
        rows[1]["ready"] = both["report"]["ready"]
    return [row | {"load": loadavg(), "setup": setup} for row in rows]


def _seconds(times: list[float]) -> dict:
    low, median = min_median(times)
    return {
        "seconds": round(median, 1),
        "min s": round(low, 1),
        "each s": ", ".join(f"{t:.1f}" for t in times),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--scale", type=float, default=1.0, help="sample and image counts x this (default 1: full size)"
    )
    ap.add_argument(
        "--work", type=Path, default=WORK, help="where the inputs are kept (built once per scale)"
    )
    ap.add_argument("--rounds", type=int, default=3, help="times each way is run, interleaved")
    ap.add_argument("--mgdata", type=Path, help="a folder holding another mgdata package, to time that one")
    args = ap.parse_args()
    for row in run(args.scale, args.work, args.mgdata, args.rounds):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
