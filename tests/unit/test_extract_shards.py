"""`ingest.extract_shards`: shards overlap two at a time in one process, results stay in shard order, and a failure
drops the shards not yet begun."""

from __future__ import annotations

import threading
import time

import pytest

from mgdata import ingest


def test_the_next_shard_starts_while_the_last_one_runs_and_results_keep_shard_order(monkeypatch):
    started = {s: threading.Event() for s in "abc"}

    def fake_extract(run, source, shard_id):
        started[shard_id].set()
        if shard_id == "a":  # a cannot end until b has begun: only an overlap lets this finish
            assert started["b"].wait(10), "shard b did not start while shard a was running"
        time.sleep(0.05 if shard_id == "b" else 0)
        return {"shard": shard_id}

    monkeypatch.setattr(ingest, "extract_shard", fake_extract)
    assert [r["shard"] for r in ingest.extract_shards(None, "coco", ["a", "b", "c"])] == ["a", "b", "c"]


def test_a_failed_shard_stops_the_shards_not_yet_begun(monkeypatch):
    ran: list[str] = []

    def fake_extract(run, source, shard_id):
        ran.append(shard_id)
        if shard_id == "a":
            raise ingest.SourceFailed("source 'coco', file f.zip, shard 0: bad archive")
        time.sleep(0.5)
        return {"shard": shard_id}

    monkeypatch.setattr(ingest, "extract_shard", fake_extract)
    with pytest.raises(ingest.SourceFailed, match="bad archive"):
        ingest.extract_shards(None, "coco", list("abcdefg"))
    # a failed, b was running beside it, c may have taken a's slot before the rest were dropped: never d and later
    assert set(ran[:2]) == {"a", "b"} and not set(ran) & set("defg")
