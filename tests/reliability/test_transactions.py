"""Each stage that changes what is published is a transaction a retry completes.

A shrinking refresh (some paths removed, one changed, one usable image gone bad, one bad image made good) is
finalized with a failure injected before each store operation of `finalize`, in turn; then finalize runs again and
`assemble` after it. The same for `assemble` with a layout: a failure before each file placement and each report
write. Every time, on the local store and on S3 (moto), the result must equal an undisturbed run's (objects, the
manifest, the diff in the summary) and the store's invariant must hold (`mgdata.check`). Last, a real `kill -9` of a
child process in the middle of finalize on S3.

The injected failure is `Killed`, a BaseException: no `except Exception` of ours sees it, as none sees a SIGKILL.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from odd_sources import PREFIX, S3_ENV, SOURCE, png, publish, rows, s3_bucket, snapshot, zip_of

from mgdata import manifest
from mgdata.check import check_store
from mgdata.ingest import (
    Run,
    extract_shard,
    fetch_file,
    finalize_journal_key,
    finalize_source,
    ingest_source,
    plan_shards,
    plan_source,
)
from mgdata.report import assemble_run
from mgdata.settings import Settings
from mgdata.storage import LocalStore, S3Store, StoreError

HTML = b"<!DOCTYPE html><html>gone</html>"


def refresh_pair(n: int = 8, kept: int = 3) -> tuple[list, list]:
    """(before, after): `after` keeps `kept` of the `n` images, changes one, turns one bad and one good again."""
    before = [(f"{PREFIX}img{i:03d}.png", png((i, 100, 50))) for i in range(n)]
    before += [(PREFIX + "bad.png", HTML), (PREFIX + "fixed.png", HTML)]
    after = before[:kept]
    after[1] = (after[1][0], png((1, 2, 3)))  # changed
    after[2] = (after[2][0], HTML)  # was usable, now invalid: its data/ object must go
    after += [(PREFIX + "bad.png", HTML), (PREFIX + "fixed.png", png((9, 9, 9)))]  # invalid → usable
    return before, after


class Killed(BaseException):
    """Stands for a SIGKILL at that point: nothing of the stage after it runs."""


def crashing(base):
    """A store class that fails before its `crash_at`-th operation: each write, delete and layout read."""

    class Crashing(base):
        def __init__(self, *args, crash_at: int | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.crash_at, self.ops = crash_at, []

        def step(self, what: str) -> None:
            self.ops.append(what)
            if len(self.ops) == self.crash_at:
                raise Killed(what)

        def put_bytes(self, key, data, **kw):
            self.step(f"put {key}")
            super().put_bytes(key, data, **kw)

        def delete(self, key):
            self.step(f"delete {key}")
            super().delete(key)

        def local_path(self, key):  # a local layout links each file from here
            if key.startswith(("data/", "annotations/")):
                self.step(f"place {key}")
            return super().local_path(key)

        def open_range(self, key, start=0, end=None):  # an S3 layout downloads each file from here
            if key.startswith(("data/", "annotations/")) and isinstance(self, S3Store):
                self.step(f"place {key}")
            return super().open_range(key, start, end)

    return Crashing


class Backend:
    """Copies of one prepared store, each with its own layout folder, on a local folder or on S3."""

    def __init__(self, kind: str, tmp_path: Path, moto_endpoint: str | None):
        self.kind, self.tmp = kind, tmp_path
        if kind == "s3":
            self.client, self.bucket = s3_bucket(moto_endpoint)

    def store(self, name: str, crash_at: int | None = None):
        if self.kind == "s3":
            return crashing(S3Store)(self.bucket, name, self.client, crash_at=crash_at)
        return crashing(LocalStore)(self.tmp / name / "store", crash_at=crash_at)

    def layout(self, name: str) -> Path:
        return self.tmp / name / "data"

    def copy(self, src: str, dst: str) -> None:
        if self.kind == "s3":
            for o in S3Store(self.bucket, src, self.client).list(""):
                self.client.copy_object(
                    Bucket=self.bucket,
                    Key=f"{dst}/{o.key}",
                    CopySource={"Bucket": self.bucket, "Key": f"{src}/{o.key}"},
                )
        else:
            shutil.copytree(self.tmp / src / "store", self.tmp / dst / "store")
        if self.layout(src).exists():
            shutil.copytree(self.layout(src), self.layout(dst), symlinks=True)

    def run(self, name: str, catalog: str, run_id: str, crash_at: int | None = None) -> Run:
        settings = Settings(storage="unused", catalog=catalog, layout_dir=str(self.layout(name)))
        return Run(settings, run_id, _store=self.store(name, crash_at))


@pytest.fixture(params=["local", "s3"])
def prepared(request, mirror, tmp_path):
    """`base`: a first ingest and its assemble, then a shrinking refresh fetched and extracted, not finalized."""
    endpoint = request.getfixturevalue("moto_endpoint") if request.param == "s3" else None
    backend = Backend(request.param, tmp_path, endpoint)
    before, after = refresh_pair()
    first = publish(mirror, tmp_path, [("ai2d.zip", zip_of(before))])
    second = publish(mirror, tmp_path, [("ai2d.zip", zip_of(after))])
    run1 = backend.run("base", first, "run1")
    ingest_source(run1, SOURCE)
    assemble_run(run1, [SOURCE])
    run2 = backend.run("base", second, "run2")
    for f in plan_source(run2, SOURCE):
        fetch_file(run2, SOURCE, f["file"])
    for shard in plan_shards(run2, SOURCE):
        extract_shard(run2, SOURCE, shard)
    return backend, second


def summary(run: Run) -> dict:
    return json.loads(run.store.read_bytes(run.key(SOURCE, "summary.json")))


def outcome(run: Run) -> dict:
    s = summary(run)
    return {k: s[k] for k in ("diff", "diff_paths", "diff_since")} | {"snapshot": snapshot(run.store)}


def assert_invariant(run: Run) -> None:
    findings = check_store(run.store, run.catalog, layout_dir=run.settings.layout_dir)
    assert findings.problems == []


def test_finalize_completes_after_a_failure_at_every_step(prepared):
    backend, catalog = prepared
    backend.copy("base", "undisturbed")
    clean = backend.run("undisturbed", catalog, "run2")
    finalize_source(clean, SOURCE)
    steps = list(clean.store.ops)
    assemble_run(backend.run("undisturbed", catalog, "run2"), [SOURCE])
    expected = outcome(clean)
    assert expected["diff_since"] == "run1"
    assert expected["diff"] == {
        "added": 0,
        "removed": 5,
        "changed": 3,
    }  # 5 gone; img001 changed, img002 broken, fixed.png fixed
    assert_invariant(clean)
    assert any(s.startswith("delete data/") for s in steps) and any("quarantine/" in s for s in steps)
    # A finalize that finished, run again by the same run (its task's success was lost): the same diff, not 0/0/0.
    again = backend.run("undisturbed", catalog, "run2")
    finalize_source(again, SOURCE)
    assemble_run(again, [SOURCE])
    assert outcome(again) == expected

    for k in range(1, len(steps) + 1):
        name = f"finalize-{k}"
        backend.copy("base", name)
        with pytest.raises(Killed):
            finalize_source(backend.run(name, catalog, "run2", crash_at=k), SOURCE)
        retry = backend.run(name, catalog, "run2")
        finalize_source(retry, SOURCE)
        assemble_run(retry, [SOURCE])
        assert outcome(retry) == expected, f"after a failure before {steps[k - 1]!r}"
        assert json.loads(retry.store.read_bytes(finalize_journal_key(SOURCE)))["done"] is True
        assert_invariant(retry)


def test_assemble_and_layout_complete_after_a_failure_at_every_step(prepared):
    backend, catalog = prepared
    finalize_source(backend.run("base", catalog, "run2"), SOURCE)
    backend.copy("base", "undisturbed")
    clean = backend.run("undisturbed", catalog, "run2")
    assemble_run(clean, [SOURCE])
    steps = list(clean.store.ops)
    assert [s for s in steps if s.startswith("place data/")] and "put runs/run2/report.json" in steps
    assert_invariant(clean)
    tree = sorted(
        p.relative_to(backend.layout("undisturbed")) for p in backend.layout("undisturbed").rglob("*")
    )

    for k in range(1, len(steps) + 1):
        name = f"assemble-{k}"
        backend.copy("base", name)
        with pytest.raises(Killed):
            assemble_run(backend.run(name, catalog, "run2", crash_at=k), [SOURCE])
        retry = backend.run(name, catalog, "run2")
        assemble_run(retry, [SOURCE])
        assert sorted(p.relative_to(backend.layout(name)) for p in backend.layout(name).rglob("*")) == tree
        assert_invariant(retry)


def test_a_killed_layout_leaves_temp_files_that_the_retry_removes(prepared):
    """A SIGKILL mid-copy leaves `.<name>.<random>.tmp` beside the file being placed; the next assemble sweeps it."""
    backend, catalog = prepared
    run = backend.run("base", catalog, "run2")
    finalize_source(run, SOURCE)
    stray = backend.layout("base") / "ai2d/images/.img000.png.0123abcd.tmp"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"half a file")
    findings = check_store(run.store, run.catalog, layout_dir=run.settings.layout_dir)
    assert any("temp file left in the layout" in p for p in findings.problems)
    assemble_run(run, [SOURCE])
    assert not stray.exists()
    assert_invariant(run)


CHILD = """
import sys, time
from mgdata.ingest import Run, finalize_source
from mgdata.settings import Settings
from mgdata.storage import S3Store, s3_client

endpoint, bucket, catalog = sys.argv[1:4]


class SlowDeletes(S3Store):  # the kill lands between two deletes of stale objects
    def delete(self, key):
        time.sleep(0.05)
        super().delete(key)


store = SlowDeletes(bucket, "store", s3_client(endpoint_url=endpoint))
finalize_source(Run(Settings(storage=store.url, catalog=catalog), "run2", _store=store), "ai2d")
"""


def test_sigkill_during_a_shrinking_finalize_on_s3_then_retry(mirror, tmp_path, moto_endpoint):
    """The issue's case at a smaller scale: 60 images shrink to 5 with `kill -9` during finalize. The retry's
    diff still says what the refresh removed, and no object of a removed path is left in data/."""
    client, bucket = s3_bucket(moto_endpoint)
    before, after = refresh_pair(n=60, kept=5)
    first = publish(mirror, tmp_path, [("ai2d.zip", zip_of(before))])
    second = publish(mirror, tmp_path, [("ai2d.zip", zip_of(after))])

    def run(catalog: str, run_id: str) -> Run:
        return Run(
            Settings(storage="unused", catalog=catalog), run_id, _store=S3Store(bucket, "store", client)
        )

    run1 = run(first, "run1")
    ingest_source(run1, SOURCE)
    assemble_run(run1, [SOURCE])
    run2 = run(second, "run2")
    for f in plan_source(run2, SOURCE):
        fetch_file(run2, SOURCE, f["file"])
    for shard in plan_shards(run2, SOURCE):
        extract_shard(run2, SOURCE, shard)

    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, moto_endpoint, bucket, second],
        env={**os.environ, **S3_ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )

    def published() -> bool:  # the new manifest is out, the stale objects not yet all deleted
        try:
            table = manifest.read_table(run2.store, manifest.source_key(SOURCE), columns=["path"])
        except StoreError:  # replaced while this poll read it (S3Store refuses to mix versions): look again
            return False
        return table is not None and table.num_rows == len(after)

    deadline = time.monotonic() + 60
    while not published():
        assert child.poll() is None, child.stdout.read().decode()[-2000:]
        assert time.monotonic() < deadline, "finalize never published the new manifest"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    assert child.wait(30) == -signal.SIGKILL
    data = {o.key for o in run2.store.list("data/")}
    assert len(data) > 5, "killed too late: every stale object was already gone"

    retry = run(second, "run2")
    finalize_source(retry, SOURCE)
    assemble_run(retry, [SOURCE])
    assert summary(retry)["diff"] == {"added": 0, "removed": 55, "changed": 3}
    assert sorted(o.key.removeprefix("data/") for o in retry.store.list("data/")) == sorted(
        p for p, r in rows(retry.store).items() if r["status"] in manifest.USABLE
    )
    assert_invariant(retry)
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
