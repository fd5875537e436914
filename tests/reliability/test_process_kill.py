"""A task process SIGKILLed mid-fetch and mid-extract, then run again: the result is byte-identical to an
undisturbed run (data/ objects, the source manifest, raw/), and no temporary object or open upload is left.

The stages run in a child `python -c` (the way a worker runs a task); the sample mirror serves the AI2D replica
rate-limited so the kill lands mid-transfer, and the extract child's store writes are slowed so it lands mid-shard.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from mgdata import manifest
from mgdata.ingest import (
    Run,
    extract_shard,
    fetch_file,
    finalize_source,
    ingest_source,
    plan_shards,
    plan_source,
)
from mgdata.settings import Settings
from mgdata.storage import LocalStore, S3Store, s3_client
from mgdata.storage.local import _pid_alive

SOURCE = "ai2d"
RUN_ID = "run1"

CHILD = """
import sys, time
from mgdata.ingest import Run, fetch_file, plan_source, plan_shards, extract_shard
from mgdata.settings import Settings
from mgdata.storage import LocalStore
stage, storage, catalog = sys.argv[1:4]
forked = len(sys.argv) > 4
if forked:  # this shard into forked worker processes, however small
    import mgdata.extract
    mgdata.extract.FORK_MIN_BYTES = 1
if stage == "extract":  # a slow store: the kill lands between two image writes
    put, pause = LocalStore.put_bytes, 0.3 if forked else 0.05
    LocalStore.put_bytes = lambda self, key, data, **kw: (time.sleep(pause), put(self, key, data, **kw))[1]
run = Run(Settings(storage=storage, catalog=catalog), "run1")
if stage == "fetch":
    for f in plan_source(run, "ai2d"):
        fetch_file(run, "ai2d", f["file"])
else:
    for shard in plan_shards(run, "ai2d"):
        extract_shard(run, "ai2d", shard)
"""


def snapshot(store) -> dict:
    """What a run produced that must not depend on faults: every data/ and raw/ object's bytes, and the manifest."""
    objects = {
        o.key: hashlib.sha256(store.read_bytes(o.key)).hexdigest()
        for prefix in ("data/", "raw/", "quarantine/")
        for o in store.list(prefix)
    }
    return {
        "objects": objects,
        "manifest": manifest.read_table(store, manifest.source_key(SOURCE)).to_pylist(),
    }


@pytest.fixture(scope="module")
def undisturbed(mirror, tmp_path_factory):
    _, catalog, _ = mirror
    store = LocalStore(tmp_path_factory.mktemp("undisturbed"))
    summary = ingest_source(Run(Settings(storage=store.url, catalog=catalog), RUN_ID), SOURCE)
    assert summary["status"] == "ok"
    return snapshot(store)


def start_child(
    stage: str, storage: str, catalog: str, env: dict | None = None, *, forked: bool = False
) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, stage, storage, catalog, *(["forked"] * forked)],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def kill_when(proc: subprocess.Popen, ready, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the {what} child ended before the kill: {proc.stdout.read().decode()[-2000:]}")
        assert time.monotonic() < deadline, f"the {what} child never got to the point of the kill"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL  # reaped: its pid is gone, as after a worker's SIGKILL


def tmp_parts(store: LocalStore, min_bytes: int = 1) -> list[Path]:
    """Temporary files of at least `min_bytes`; a vanished one (renamed in the meantime) is skipped."""
    parts = []
    for p in (store.root / LocalStore.TMP_DIR).glob("*.part"):
        try:
            if p.stat().st_size >= min_bytes:
                parts.append(p)
        except FileNotFoundError:
            pass
    return parts


def test_local_store_sigkill_during_fetch_then_retry(mirror, undisturbed, tmp_path):
    srv, catalog, replica = mirror
    store = LocalStore(tmp_path / "store")
    srv.rate_limit = replica.size // 3  # about 3 s for the whole file
    try:
        child = start_child("fetch", store.url, catalog)
        # Wait for the archive's part, not the small plan/state objects that pass through .tmp/ on the way:
        # those are renamed at once, and a kill seen on one of them landed before the fetch began.
        kill_when(child, lambda: tmp_parts(store, min_bytes=replica.size // 20), "fetch")
    finally:
        srv.rate_limit = None
    assert store.stat(f"raw/{SOURCE}/{replica.name}") is None  # nothing published under the key
    left = list((store.root / LocalStore.TMP_DIR).glob("*.part"))
    assert len(left) == 1 and f".{child.pid}." in left[0].name

    retry = Run(Settings(storage=store.url, catalog=catalog), RUN_ID)
    assert (
        retry.store.root == store.root
    )  # the retry opens the store in a new process: the dead writer's part goes
    assert list((store.root / LocalStore.TMP_DIR).glob("*")) == []
    assert ingest_source(retry, SOURCE)["status"] == "ok"
    assert snapshot(store) == undisturbed


def processes_running(code: str) -> list[int]:
    """Live processes running `python -c code` (a task process and the workers it forked)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and code.encode() in (entry / "cmdline").read_bytes():
                if _pid_alive(int(entry.name)):  # a zombie writes nothing more
                    found.append(int(entry.name))
        except OSError:  # gone meanwhile
            pass
    return found


@pytest.mark.parametrize("workers", ["threads", "forked workers"])
def test_local_store_sigkill_during_extract_then_retry(mirror, undisturbed, tmp_path, workers):
    """Killed mid-shard, with the shard's members on threads or in worker processes the task forked: no manifest
    part, only whole images, no worker left writing, and the retry ends as an undisturbed run."""
    _, catalog, _ = mirror
    store = LocalStore(tmp_path / "store")
    run = Run(Settings(storage=store.url, catalog=catalog), RUN_ID)
    for f in plan_source(run, SOURCE):
        fetch_file(run, SOURCE, f["file"])

    forked = workers == "forked workers"
    child = start_child(
        "extract",
        store.url,
        catalog,
        {"MGDATA_EXTRACT_PROCESSES": "3", "MGDATA_EXTRACT_THREADS": "3"},
        forked=forked,
    )
    ready = (lambda: len(processes_running(CHILD)) == 4) if forked else (lambda: True)
    kill_when(child, lambda: ready() and len(list(store.list("data/"))) >= 5, "extract")
    deadline = time.monotonic() + 1  # the workers had seconds of writes left
    while processes_running(CHILD) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert processes_running(CHILD) == []  # the forked workers died with their task
    assert (
        list(store.list(manifest.parts_prefix(SOURCE))) == []
    )  # killed mid-shard: its manifest part not written
    for o in store.list("data/"):  # every image published so far is whole (temp file + rename)
        assert undisturbed["objects"][o.key] == hashlib.sha256(store.read_bytes(o.key)).hexdigest()

    retry = Run(Settings(storage=store.url, catalog=catalog), RUN_ID)
    for shard in plan_shards(retry, SOURCE):  # the task retried: shard and extract again, then finalize
        extract_shard(retry, SOURCE, shard)
    assert finalize_source(retry, SOURCE)["status"] == "ok"
    assert snapshot(store) == undisturbed
    assert list((store.root / LocalStore.TMP_DIR).glob("*")) == []


def test_s3_sigkill_during_fetch_aborts_the_abandoned_upload(mirror, undisturbed, moto_endpoint):
    srv, catalog, replica = mirror
    client = s3_client(
        endpoint_url=moto_endpoint, aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1"
    )
    bucket = f"kill-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    storage = f"s3://{bucket}/store"
    env = {
        "AWS_ENDPOINT_URL_S3": moto_endpoint, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_DEFAULT_REGION": "us-east-1",
    }  # fmt: skip
    child_code = CHILD.replace(
        'run = Run(Settings(storage=storage, catalog=catalog), "run1")',
        "from mgdata.storage import S3Store, s3_client\n"
        "run = Run(Settings(storage=storage, catalog=catalog), 'run1', _store=S3Store("
        f"{bucket!r}, 'store', s3_client(), part_size=1024 * 1024))",
    )
    assert child_code != CHILD  # the child writes 1 MiB parts: its upload is open long before the file ends

    def uploads() -> list[dict]:
        return client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])

    srv.rate_limit = replica.size // 3
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", child_code, "fetch", storage, catalog], env={**os.environ, **env},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        kill_when(child, lambda: uploads(), "S3 fetch")
    finally:
        srv.rate_limit = None
    assert [u["Key"] for u in uploads()] == [
        f"store/raw/{SOURCE}/{replica.name}"
    ]  # the killed writer's parts

    store = S3Store(bucket, "store", client, part_size=5 * 1024 * 1024)
    assert store.stat(f"raw/{SOURCE}/{replica.name}") is None
    assert (
        ingest_source(Run(Settings(storage=storage, catalog=catalog), RUN_ID, _store=store), SOURCE)["status"]
        == "ok"
    )
    assert uploads() == []
    assert snapshot(store) == undisturbed


def test_stale_part_rules(tmp_path):
    """Which leftovers a LocalStore removes when opened: a dead local writer's (exited, or a zombie), and anyone's
    after a day untouched; never a live writer's (another process, or another host whose liveness cannot be told from here)."""
    tmp = tmp_path / LocalStore.TMP_DIR
    tmp.mkdir()
    host = socket.gethostname()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # exits, and stays unreaped until wait() below
    deadline = time.monotonic() + 30
    while Path(f"/proc/{zombie.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
        assert time.monotonic() < deadline, "the child never exited"
        time.sleep(0.02)
    names = {
        "dead": f"{host}.{int(dead.stdout)}.a.part",
        "zombie": f"{host}.{zombie.pid}.z.part",  # killed but not reaped: where PID 1 does not reap orphans
        "live": f"{host}.{os.getpid()}.b.part",
        "other-host-fresh": "elsewhere.1.c.part",
        "other-host-old": "elsewhere.2.d.part",
        "old-style": "0123abcd.part",
    }
    for name in names.values():
        (tmp / name).write_bytes(b"partial")
    day_ago = time.time() - LocalStore.STALE_PART_SECONDS - 60
    for which in ("other-host-old", "old-style"):
        os.utime(tmp / names[which], (day_ago, day_ago))

    LocalStore(tmp_path)
    zombie.wait()

    assert sorted(p.name for p in tmp.iterdir()) == sorted([names["live"], names["other-host-fresh"]])


class RecordingStore(LocalStore):
    """A local store that records, in order, each object write (key, durable) and each `sync()`."""

    def __init__(self, root):
        super().__init__(root)
        self.events: list[tuple[str, bool | None]] = []

    def new_writer(self, key, *, durable=True):
        self.events.append((key, durable))
        return super().new_writer(key, durable=durable)

    def put_bytes(self, key, data, *, durable=True):  # LocalStore's own, which needs no writer
        self.events.append((key, durable))
        super().put_bytes(key, data, durable=durable)

    def sync(self):
        self.events.append(("sync", None))
        super().sync()


def test_images_are_flushed_once_per_shard_before_its_manifest_part(mirror, undisturbed, tmp_path):
    """Images are written without an fsync each; one store flush comes after the shard's last image and before its
    manifest part, so after a power cut a manifest row never names an image that is not on disk."""
    _, catalog, _ = mirror
    store = RecordingStore(tmp_path / "store")
    run = Run(Settings(storage=store.url, catalog=catalog), RUN_ID, _store=store)
    for f in plan_source(run, SOURCE):
        fetch_file(run, SOURCE, f["file"])
    shards = plan_shards(run, SOURCE)
    store.events.clear()
    for shard in shards:
        extract_shard(run, SOURCE, shard)

    keys = [k for k, _ in store.events]
    parts = [i for i, k in enumerate(keys) if k.startswith(manifest.parts_prefix(SOURCE))]
    syncs = [i for i, k in enumerate(keys) if k == "sync"]
    images = [i for i, k in enumerate(keys) if k.startswith(("data/", "quarantine/"))]
    assert len(parts) == len(shards) == len(syncs) and images
    assert all(store.events[i][1] is False for i in images)  # no fsync per image
    assert all(store.events[i][1] is True for i in parts)  # the part itself is written durably
    for sync, part in zip(syncs, parts, strict=True):  # each part right after its shard's flush
        assert sync < part and not [i for i in images if sync < i < part]
    assert max(images) < syncs[-1]
    assert finalize_source(run, SOURCE)["status"] == "ok"
    assert snapshot(store) == undisturbed
