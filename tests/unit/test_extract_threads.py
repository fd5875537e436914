"""MGDATA_EXTRACT_THREADS sets the threads of every extract task, MGDATA_EXTRACT_PROCESSES the worker processes a
big zip shard is cut among (never more than the threads); a bad value is an error naming the variable; and which
shards are cut, into what."""

from __future__ import annotations

import os

import pytest

from mgdata import extract
from mgdata.archive import Member
from mgdata.extract import extract_processes, extract_threads, worker_parts


def test_default_is_twice_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.delenv("MGDATA_EXTRACT_THREADS", raising=False)
    assert extract_threads() == max(2, len(os.sched_getaffinity(0)) * 2)


def test_the_variable_sets_it(monkeypatch):
    monkeypatch.setenv("MGDATA_EXTRACT_THREADS", "3")
    assert extract_threads() == 3


def test_a_bad_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("MGDATA_EXTRACT_THREADS", "many")
    with pytest.raises(ValueError, match="MGDATA_EXTRACT_THREADS must be a whole number"):
        extract_threads()


def test_worker_processes_default_to_the_usable_cores_and_never_outnumber_the_threads(monkeypatch):
    monkeypatch.delenv("MGDATA_EXTRACT_PROCESSES", raising=False)
    monkeypatch.delenv("MGDATA_EXTRACT_THREADS", raising=False)
    assert extract_processes() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("MGDATA_EXTRACT_THREADS", "2")  # one extract task per core: two workers of one thread
    assert extract_processes() == min(2, len(os.sched_getaffinity(0)))
    monkeypatch.setenv("MGDATA_EXTRACT_PROCESSES", "1")
    assert extract_processes() == 1
    monkeypatch.setenv("MGDATA_EXTRACT_PROCESSES", "some")
    with pytest.raises(ValueError, match="MGDATA_EXTRACT_PROCESSES must be a whole number"):
        extract_processes()


def members(sizes: list[int]) -> list[Member]:
    out, offset = [], 0
    for i, size in enumerate(sizes):
        out.append(Member(f"m{i}.jpg", offset, size, size, 0, 0, "file", span_end=offset + 30 + 6 + size))
        offset += 30 + 6 + size
    return out


def test_a_shard_is_cut_into_contiguous_ranges_of_at_least_the_fork_minimum(monkeypatch):
    monkeypatch.setenv("MGDATA_EXTRACT_PROCESSES", "4")
    monkeypatch.setenv("MGDATA_EXTRACT_THREADS", "4")
    mib = 1024 * 1024
    big = members([mib] * 64)  # 64 MiB: four workers of 16 MiB
    end = big[-1].span_end
    parts = worker_parts(big, 0, end)
    assert len(parts) == 4 and [p.count for p in parts] == [16] * 4
    assert parts[0].start == 0 and parts[-1].end == end
    assert all(a.end == b.start for a, b in zip(parts, parts[1:], strict=False))  # every byte in one part
    assert sum((p.select(big) for p in parts), []) == big
    assert len(worker_parts(big[:40], 0, big[39].span_end)) == 2  # 40 MiB: two shares of 16 MiB or more
    assert worker_parts(big[:20], 0, big[19].span_end) == []  # 20 MiB: not worth a fork
    monkeypatch.setattr(extract, "FORK_MIN_BYTES", 1)
    assert len(worker_parts(big[:3], 0, big[2].span_end)) == 3  # never more parts than members
