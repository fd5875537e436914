"""`ingest.extract_shards`: a file's shards overlap two at a time in one process, files go one after another,
results stay in shard order, and a failure drops the shards not yet begun."""

from __future__ import annotations

import threading
import time

import pytest

from mgdata import ingest


def test_the_next_shard_starts_while_the_last_one_runs_and_results_keep_shard_order(monkeypatch):
    shards = ["f.zip/0", "f.zip/1", "f.zip/2"]
    started = {s: threading.Event() for s in shards}

    def fake_extract(run, source, shard_id):
        started[shard_id].set()
        if shard_id == "f.zip/0":  # it cannot end until shard 1 has begun: only an overlap lets this finish
            assert started["f.zip/1"].wait(10), "shard 1 did not start while shard 0 was running"
        time.sleep(0.05 if shard_id == "f.zip/1" else 0)
        return {"shard": shard_id}

    monkeypatch.setattr(ingest, "extract_shard", fake_extract)
    assert [r["shard"] for r in ingest.extract_shards(None, "coco", shards)] == shards


def test_the_files_of_a_source_go_one_after_another(monkeypatch):
    """Two files may name the same path: the later file's shards start only once the earlier file's have ended, so
    the later file's bytes are the ones stored, as the merged manifest says."""
    events: list[str] = []

    def fake_extract(run, source, shard_id):
        events.append(f"start {shard_id}")
        time.sleep(0.05)
        events.append(f"end {shard_id}")
        return {"shard": shard_id}

    monkeypatch.setattr(ingest, "extract_shard", fake_extract)
    shards = ["one.zip/0", "one.zip/1", "one.zip/2", "two.zip/0"]
    assert [r["shard"] for r in ingest.extract_shards(None, "coco", shards)] == shards
    later = events.index("start two.zip/0")
    assert all(events.index(f"end one.zip/{i}") < later for i in range(3)), events


def test_a_failed_shard_stops_the_shards_not_yet_begun(monkeypatch):
    ran: list[str] = []

    def fake_extract(run, source, shard_id):
        ran.append(shard_id)
        if shard_id == "f.zip/a":
            raise ingest.SourceFailed("source 'coco', file f.zip, shard 0: bad archive")
        time.sleep(0.5)
        return {"shard": shard_id}

    monkeypatch.setattr(ingest, "extract_shard", fake_extract)
    with pytest.raises(ingest.SourceFailed, match="bad archive"):
        ingest.extract_shards(None, "coco", [f"f.zip/{c}" for c in "abcdefg"] + ["g.zip/0"])
    # a failed, b was running beside it, c may have taken a's slot before the rest were dropped: never d and later,
    # nor the next file
    assert set(ran[:2]) == {"f.zip/a", "f.zip/b"}
    assert not set(ran) & {*(f"f.zip/{c}" for c in "defg"), "g.zip/0"}, ran
