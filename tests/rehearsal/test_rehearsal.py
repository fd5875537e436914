"""The rehearsal's 1% version, end to end through the same command a user types (`make rehearsal SCALE=0.01`).

`python -m bench.rehearsal --scale 0.01` builds the rehearsal mirror (1 % of every source's real file count, real
archive shapes), serves it, starts api-server + scheduler + dag-processor with the LocalExecutor on a throwaway
PostgreSQL database, triggers a run of every source through the REST API, then an unchanged refresh and a refresh
after AI2D changed upstream. Here with a twentieth of the real run's extract instances (`--instances 0.05`), so the
suite spends minutes, not an hour, on Airflow's per-instance cost; the shapes and counts are the same.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from offline_mirror.build import load_replicas

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(3600)


def test_one_percent_rehearsal_runs_refreshes_and_reextracts_only_the_changed_source(tmp_path):
    work = tmp_path / "rehearsal"
    cmd = [sys.executable, "-m", "bench.rehearsal", "--scale", "0.01", "--instances", "0.05"]
    done = subprocess.run(
        [*cmd, "--work", str(work), "--timeout", "1800"], cwd=ROOT, capture_output=True, text=True
    )
    result_file = work / "rehearsal.json"
    assert result_file.is_file(), done.stdout[-4000:] + done.stderr[-4000:]
    result = json.loads(result_file.read_text())
    assert done.returncode == 0 and result["problems"] == [], (result["problems"], done.stdout[-3000:])

    first = result["runs"]["first"]
    assert first["state"] == "success"
    report = json.loads((work / "store" / "runs" / first["run_id"] / "report.json").read_text())
    mirror = work / "mirror"
    by_source: dict[str, list] = {}
    for r in load_replicas(mirror):
        if r.images or r.broken:
            by_source.setdefault(r.source, []).append(r)
    assert len(by_source) == 15  # every source but DocVQA, which came through the inbox
    for name, replicas in by_source.items():
        s = report["sources"][name]
        assert s["status"] == "ok", (name, s["error"])
        assert s["images_ok"] + s["images_normalized"] == sum(r.images for r in replicas), name
        assert s["images_invalid"] == sum(r.broken for r in replicas), name
        assert (s.get("images_missing") or 0) == sum(r.missing for r in replicas), name
    docvqa = json.loads((mirror / "rehearsal.json").read_text())["docvqa"]
    assert report["sources"]["docvqa"]["images_ok"] == docvqa["images"]
    assert first["measure"]["sources"]["allava_laion"]["extract_instances"] >= 10  # one per chunk at least
    assert report["ready_to_train"]["ready"], report["ready_to_train"]["note"]

    unchanged = result["runs"]["unchanged_refresh"]
    assert unchanged["state"] == "success"
    assert unchanged["bytes_fetched"] == 0 and unchanged["files_fetched"] == 0
    assert unchanged["extracted_sources"] == []

    changed = result["runs"]["one_changed_refresh"]
    assert changed["state"] == "success"
    assert changed["extracted_sources"] == ["ai2d"]
    assert changed["files_fetched"] == 1
