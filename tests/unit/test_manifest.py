"""Manifest merge and diff: the later part wins a path, rows come out sorted, and the diff counts by path and sha256."""

from __future__ import annotations

from mgdata import manifest


def rows(*items: tuple[str, str | None], run: str = "r") -> list[dict]:
    return [
        {"path": p, "bytes": 1, "sha256": h, "status": "ok" if h else "invalid", "origin": p, "run_id": run}
        for p, h in items
    ]


def test_merge_keeps_the_last_occurrence_of_each_path_and_sorts():
    first = manifest.to_table(rows(("b.jpg", "1"), ("a.jpg", "1"), ("b.jpg", "2")))
    second = manifest.to_table(rows(("c.jpg", "1"), ("a.jpg", "3")))
    merged = manifest.merge([first, None, manifest.empty(), second])
    assert merged.select(["path", "sha256"]).to_pylist() == [
        {"path": "a.jpg", "sha256": "3"},  # the later part wins
        {"path": "b.jpg", "sha256": "2"},  # and within a part, the later row
        {"path": "c.jpg", "sha256": "1"},
    ]
    assert merged.schema == manifest.SCHEMA


def test_merge_of_nothing_is_the_empty_manifest():
    assert manifest.merge([]).num_rows == 0
    assert manifest.merge([manifest.empty()]).schema == manifest.SCHEMA
    one = manifest.merge([manifest.to_table(rows(("x.jpg", "1")))])
    assert one["path"].to_pylist() == ["x.jpg"]


def test_diff_counts_added_removed_and_changed_including_invalid_rows():
    old = manifest.merge(
        [manifest.to_table(rows(("a", "1"), ("b", "1"), ("c", None), ("d", None), ("e", "1")))]
    )
    new = manifest.merge(
        [manifest.to_table(rows(("a", "1"), ("b", "2"), ("c", None), ("d", "1"), ("f", "1")))]
    )
    change = manifest.diff(old, new)
    assert change.as_dict() == {"added": 1, "removed": 1, "changed": 2}
    assert change.examples == {"added": ["f"], "removed": ["e"], "changed": ["b", "d"]}
    assert manifest.diff(None, new).as_dict() == {"added": 5, "removed": 0, "changed": 0}
