"""Every odd member is one truthful row, and the rest of its archive is ingested: names a
filesystem cannot hold, non-UTF-8 tar names, duplicate names in a tar, members named `..` or nothing. After each
run the store's invariant holds (`mgdata.check`, the same checker `python -m mgdata check` runs)."""

from __future__ import annotations

import hashlib

import pytest
from odd_sources import (
    PREFIX,
    SOURCE,
    noise_png,
    png,
    publish,
    rows,
    s3_store,
    tar_of,
    zip_of,
)

from mgdata.check import check_store
from mgdata.ingest import Run, ingest_source
from mgdata.report import assemble_run
from mgdata.settings import Settings
from mgdata.storage import LocalStore

pytestmark = pytest.mark.usefixtures("shard_workers")  # every case on threads and on forked workers

GOOD = {f"{PREFIX}good{i}.png": png((i * 40, 10, 200)) for i in range(3)}
LONG = "x" * 300 + ".png"
CLASHING = [
    *GOOD.items(),
    (PREFIX + "a.png", png((1, 1, 1))),
    (PREFIX + "a.png/b.png", png((2, 2, 2))),  # a.png is a file: this path cannot exist beside it
    (PREFIX + LONG, png((3, 3, 3))),  # a component over 255 bytes
]


def ingest(catalog: str, store, run_id: str = "run1", layout_dir=None) -> Run:
    run = Run(Settings(storage=store.url, catalog=catalog, layout_dir=layout_dir), run_id, _store=store)
    assert ingest_source(run, SOURCE)["status"] == "ok"
    assemble_run(run, [SOURCE])
    return run


def assert_invariant(run: Run, layout_dir=None) -> None:
    findings = check_store(run.store, run.catalog, layout_dir=layout_dir)
    assert findings.problems == []


def assert_clash_rows(store) -> None:
    got = rows(store)
    for path in GOOD:
        assert got[path]["status"] == "ok"
    assert got["ai2d/images/a.png"]["status"] == "ok"
    clash = got["ai2d/images/a.png/b.png"]
    assert clash["status"] == "invalid" and "a file and a folder of one name" in clash["error"], clash
    long = got[f"ai2d/images/{LONG}"]
    assert long["status"] == "invalid" and "component of 304 bytes" in long["error"], long
    assert store.stat("data/ai2d/images/a.png") is not None


def test_a_name_the_filesystem_cannot_hold_is_one_invalid_row_on_a_local_store(mirror, tmp_path):
    catalog = publish(mirror, tmp_path, [("odd.zip", zip_of(CLASHING))])
    run = ingest(catalog, LocalStore(tmp_path / "store"))
    assert_clash_rows(run.store)
    assert_invariant(run)


def test_the_same_archive_on_s3_with_a_layout_gives_the_same_rows_and_a_report(
    mirror, tmp_path, moto_endpoint
):
    catalog = publish(mirror, tmp_path, [("odd.zip", zip_of(CLASHING))])
    layout = tmp_path / "layout" / "data"
    run = ingest(catalog, s3_store(moto_endpoint), layout_dir=str(layout))
    assert_clash_rows(run.store)  # S3 would take both keys: the rows do not depend on the store
    assert run.store.stat("runs/run1/report.json") is not None
    assert (layout / "ai2d/images/a.png").is_file()
    assert not [p for p in layout.rglob("*") if p.name.endswith(".tmp")]
    assert_invariant(run, layout)


def test_a_clash_across_files_is_skipped_and_reported_by_the_layout(mirror, tmp_path, moto_endpoint):
    """Two files of a source: one holds a.png, the other a.png/b.png. S3 holds both objects; the data/ tree cannot,
    so the layout places one, names the other in the report, and leaves no temp file."""
    catalog = publish(
        mirror,
        tmp_path,
        [
            ("one.zip", zip_of([(PREFIX + "a.png", png((1, 1, 1)))])),
            ("two.zip", zip_of([(PREFIX + "a.png/b.png", png((2, 2, 2)))])),
        ],
    )
    layout = tmp_path / "layout" / "data"
    run = ingest(catalog, s3_store(moto_endpoint), layout_dir=str(layout))
    report = run.store.read_bytes("runs/run1/report.json").decode()
    assert '"skipped": 1' in report and "ai2d/images/a.png" in report
    assert not [p for p in layout.rglob("*") if p.name.endswith(".tmp")]
    assert_invariant(run, layout)


def test_a_clash_across_files_on_a_local_store_is_an_invalid_row(mirror, tmp_path):
    catalog = publish(
        mirror,
        tmp_path,
        [
            ("one.zip", zip_of([(PREFIX + "a.png", png((1, 1, 1)))])),
            ("two.zip", zip_of([(PREFIX + "a.png/b.png", png((2, 2, 2)))])),
        ],
    )
    run = ingest(catalog, LocalStore(tmp_path / "store"))
    got = rows(run.store)
    assert got["ai2d/images/a.png"]["status"] == "ok"
    clash = got["ai2d/images/a.png/b.png"]
    assert clash["status"] == "invalid" and clash["error"].startswith("not stored: "), clash
    assert_invariant(run)


def test_a_non_utf8_tar_name_is_an_escaped_invalid_row(mirror, tmp_path):
    bad = PREFIX + "caf\udce9.png"  # the byte 0xE9 (Latin-1 é), not UTF-8
    catalog = publish(mirror, tmp_path, [("odd.tar", tar_of([*GOOD.items(), (bad, png((5, 5, 5)))]))])
    run = ingest(catalog, LocalStore(tmp_path / "store"))
    got = rows(run.store)
    assert all(got[p]["status"] == "ok" for p in GOOD)
    row = got["ai2d/images/ai2d_images_caf%E9.png"]
    assert row["status"] == "invalid" and "not valid UTF-8" in row["error"], row
    assert row["origin"].endswith("!ai2d/images/caf%E9.png")
    assert_invariant(run)


@pytest.mark.parametrize("later", ["valid", "invalid"])
def test_duplicate_names_in_a_tar_the_last_member_wins_and_its_row_describes_the_stored_bytes(
    mirror, tmp_path, later
):
    """The first member decodes slowly (a large noise PNG), the second at once: finishing order is the reverse of
    archive order, and the stored object must still be the last member's, the one row describing it."""
    first, second = noise_png(1200), png((0, 0, 255)) if later == "valid" else b"<html>not an image</html>"
    catalog = publish(
        mirror, tmp_path, [("odd.tar", tar_of([(PREFIX + "dup.png", first), (PREFIX + "dup.png", second)]))]
    )
    run = ingest(catalog, LocalStore(tmp_path / "store"))
    row = rows(run.store)["ai2d/images/dup.png"]
    assert row["sha256"] == hashlib.sha256(second).hexdigest()
    if later == "valid":
        assert row["status"] == "ok"
        assert run.store.read_bytes("data/ai2d/images/dup.png") == second
        assert run.store.stat(f"quarantine/{SOURCE}/ai2d/images/dup.png") is None
    else:
        assert row["status"] == "invalid"
        assert run.store.stat("data/ai2d/images/dup.png") is None  # the earlier, valid copy is gone
        assert run.store.read_bytes(f"quarantine/{SOURCE}/ai2d/images/dup.png") == second
    assert_invariant(run)


def test_members_named_dotdot_or_nothing_get_safe_paths_and_a_refresh_dropping_them_finishes(
    mirror, tmp_path
):
    catalog = publish(
        mirror, tmp_path, [("odd.tar", tar_of([*GOOD.items(), ("..", png((7, 7, 7))), ("", png((8, 8, 8)))]))]
    )
    store = LocalStore(tmp_path / "store")
    run = ingest(catalog, store)
    got = rows(store)
    for path in ("ai2d/images/%2E%2E", "ai2d/images/%EMPTY-NAME%"):
        assert got[path]["status"] == "invalid", got[path]
    assert_invariant(run)

    shrunk = publish(mirror, tmp_path, [("odd.tar", tar_of(list(GOOD.items())))])
    again = ingest(shrunk, store, "run2")  # the refresh removes both rows (today: "unsafe object key")
    assert sorted(rows(store)) == sorted(GOOD)
    assert_invariant(again)
