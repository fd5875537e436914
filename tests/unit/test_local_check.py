"""verify over several training JSONs at once (one process per JSON): the same report as one process checking them
one after the other, and a file that cannot be read named in a plain error, from whichever worker read it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mgdata import local_check
from mgdata.__main__ import build_parser
from mgdata.catalog import load_catalog
from mgdata.local_check import Options, Pair, check_pairs
from mgdata.settings import Settings

HUMAN = {"from": "human", "value": "<image>\nWhat is it?"}
GPT = {"from": "gpt", "value": "A thing."}


def sample(i, image=None, conversations=(HUMAN, GPT)) -> dict:
    out = {"id": i, "conversations": list(conversations)}
    if image is not None:
        out["image"] = image
    return out


def entry(i, **extra) -> dict:
    return {"id": str(i), "boxes": [[1, 2, 30, 40]], "scores": [0.5], "labels": ["cat"], **extra}


def write_pair(folder: Path, name: str, prefix: str, n: int) -> Pair:
    """A training JSON with every kind of finding, more of each than the report lists, and its bbox JSON."""
    samples, entries = [], []
    for i in range(n):
        key = f"{name}-{i}"
        samples.append(sample(key, f"{prefix}/{i:05d}.jpg"))  # one in three of these is on disk
        if i % 4:
            entries.append(entry(key, scores=[1]) if i % 5 == 0 else entry(key))  # int scores: not float32
        if i % 6 == 0:
            samples.append(sample(f"{name}-text-{i}"))  # text only
        if i % 7 == 0:
            samples.append(sample(f"{name}-dropped-{i}", f"{prefix}/gone.jpg", conversations=(HUMAN,)))
        if i % 9 == 0:
            samples.append(sample(i, f"../{prefix}/{i}.jpg"))  # an int id, a path outside data/
    entries.append({"boxes": []})  # an entry without an id
    train, boxes = folder / f"{name}.json", folder / f"{name}_only_box.json"
    train.write_text(json.dumps(samples))
    boxes.write_text(json.dumps(entries))
    return Pair(str(train), str(boxes))


@pytest.fixture
def pairs(tmp_path) -> list[Pair]:
    data = tmp_path / "data"
    for prefix in ("coco/train2017", "allava_laion/images", "gqa/images"):
        (data / prefix).mkdir(parents=True)
        for i in range(0, 120, 3):
            (data / prefix / f"{i:05d}.jpg").write_bytes(b"")
    return [
        write_pair(tmp_path, "pretrain", "allava_laion/images", 90),
        write_pair(tmp_path, "instruct", "coco/train2017", 120),
        write_pair(tmp_path, "extra", "allava_laion/images", 30),
    ]


def without_timings(report: dict) -> dict:
    return {**report, "files": [{k: v for k, v in f.items() if k != "seconds"} for f in report["files"]]}


def verify(tmp_path: Path, pairs: list[Pair], *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mgdata", "verify", "--fast", "--data", str(tmp_path / "data"), *extra]
    for p in pairs:
        cmd += ["--json", p.json] + (["--boxes", p.boxes] if p.boxes else [])
    return subprocess.run(cmd, capture_output=True, text=True)


def test_several_jsons_at_once_give_the_report_of_one_process_checking_them_in_turn(pairs, tmp_path):
    options = Options(str(tmp_path / "data"), decode=False, threads=1)
    catalog = load_catalog(Settings.from_env().catalog)  # the command's
    in_turn = check_pairs(pairs, options, processes=1).as_report(catalog)
    at_once = check_pairs(pairs, options, processes=2).as_report(catalog)
    assert without_timings(at_once) == without_timings(in_turn)
    # every list of first offenders was filled up from more than one file, and cut at the same place
    assert in_turn["findings"]["image_missing"]["count"] > 40
    assert len(in_turn["findings"]["image_missing"]["first"]) == 20
    assert {f["json"] for f in in_turn["files"]} == {p.json for p in pairs}

    # the command: one report for all, each file's part the same as when it is checked alone
    both = verify(tmp_path, pairs, "--report", str(tmp_path / "all.json"))
    assert both.returncode == 1, both.stderr
    report = json.loads((tmp_path / "all.json").read_text())
    assert without_timings(report) == without_timings({**in_turn, "mode": "fast", "note": report["note"]})
    assert report["note"].startswith(in_turn["note"])
    for i, pair in enumerate(pairs):
        alone = verify(tmp_path, [pair], "--report", str(tmp_path / f"alone-{i}.json"))
        assert alone.returncode == 1, alone.stderr
        assert without_timings(json.loads((tmp_path / f"alone-{i}.json").read_text()))["files"] == [
            without_timings(report)["files"][i]
        ]


def test_a_file_a_worker_cannot_read_is_named_in_a_plain_error(pairs, tmp_path):
    bad = tmp_path / "instruct.json"
    bad.write_text('[{"id": 1, "image": "coco/train2017/00000.jpg"}, {"id": ')  # cut off
    broken = verify(tmp_path, pairs)
    assert broken.returncode == 2
    assert broken.stderr.startswith(f"verify: {bad}: not valid JSON"), broken.stderr
    assert "Traceback" not in broken.stderr

    # the first JSON (checked by the command's own process) failing as well: the first in the given order is named
    first = tmp_path / "first.json"
    first.write_bytes(b'[{"id": "\xff"}]')
    both_bad = verify(tmp_path, [Pair(str(first), pairs[0].boxes), pairs[1]])
    assert both_bad.returncode == 2 and "Traceback" not in both_bad.stderr
    assert both_bad.stderr.startswith(f"verify: {first}: not valid JSON (not UTF-8"), both_bad.stderr

    absent = Pair(str(tmp_path / "nope.json"), pairs[0].boxes)
    missing = verify(tmp_path, [pairs[0], absent])
    assert missing.returncode == 2 and "nope.json" in missing.stderr and "Traceback" not in missing.stderr

    unpaired = verify(tmp_path, [pairs[0], Pair(pairs[2].json)])  # two --json, one --boxes
    assert unpaired.returncode == 2 and "1 --boxes for 2 --json" in unpaired.stderr


def test_verify_counts_the_cores_this_process_may_run_on(monkeypatch):
    """A verify pinned to one core of a 64-core host opens 2 images at once and checks its JSONs in this process."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    args = build_parser().parse_args(
        ["verify", "--fast", "--data", "d", "--json", "a.json", "--json", "b.json"]
    )
    assert args.threads == 2

    def no_workers(method):
        raise AssertionError("check_pairs started worker processes on a one-core mask")

    checked = []
    monkeypatch.setattr(local_check.multiprocessing, "get_context", no_workers)
    monkeypatch.setattr(local_check, "check_pair", lambda check, pair, options: checked.append(pair))
    pairs = [local_check.Pair("a.json"), local_check.Pair("b.json")]
    local_check.check_pairs(pairs, local_check.Options(data="d", decode=False, threads=2))
    assert checked == pairs
