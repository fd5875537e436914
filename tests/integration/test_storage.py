"""Both store backends keep the same contract: atomic publish, ranged reads, listing, safe keys.

The S3 backend talks the real S3 protocol to moto's ThreadedMotoServer on loopback, through the production client.
"""

from __future__ import annotations

import os
import shutil

import pytest

from mgdata.storage import LocalStore, S3Store, StoreError, UnstorableKey, open_store, s3_client


@pytest.fixture(params=["local", "local-temp-names", "s3"])
def store(request, tmp_path, moto_endpoint):
    """Each backend; the local one both ways it writes bytes in hand (unnamed files where Linux makes them, named
    temp files elsewhere)."""
    if request.param.startswith("local"):
        store = LocalStore(tmp_path / "store")
        store.unnamed_files = request.param == "local" and store.unnamed_files
        return store
    return new_s3_store(moto_endpoint)


@pytest.fixture(params=["unnamed", "temp-names"])
def local_store(request, tmp_path):
    store = LocalStore(tmp_path / "store")
    if request.param == "unnamed":
        assert store.unnamed_files, "this Linux machine makes unnamed files"
    store.unnamed_files = request.param == "unnamed"
    return store


def test_bytes_replace_an_object_in_one_step_and_leave_no_temp_file(local_store):
    local_store.put_bytes("data/a/x.jpg", b"old")
    with local_store.open_seekable("data/a/x.jpg") as reader:
        local_store.put_bytes("data/a/x.jpg", b"new", durable=False)
        assert (
            reader.read() == b"old"
        )  # the reader keeps the object it opened: replaced, not rewritten in place
    assert local_store.read_bytes("data/a/x.jpg") == b"new"
    assert list((local_store.root / LocalStore.TMP_DIR).iterdir()) == []
    assert [o.key for o in local_store.list("data/")] == ["data/a/x.jpg"]


def test_a_name_the_folder_cannot_hold_is_unstorable_and_leaves_nothing(local_store):
    local_store.put_bytes("data/a", b"a file where a folder is wanted")
    local_store.put_bytes("data/b/c.jpg", b"c")
    with pytest.raises(UnstorableKey, match="data/a/x.jpg"):
        local_store.put_bytes("data/a/x.jpg", b"x")
    with pytest.raises(UnstorableKey, match="data/b"):
        local_store.put_bytes("data/b", b"a file where a folder is")
    assert sorted(o.key for o in local_store.list("data/")) == ["data/a", "data/b/c.jpg"]
    assert list((local_store.root / LocalStore.TMP_DIR).iterdir()) == []


def new_s3_store(endpoint: str) -> S3Store:
    """A store on a bucket of its own, through the production client."""
    client = s3_client(
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    bucket = f"store-{os.urandom(4).hex()}"
    client.create_bucket(Bucket=bucket)
    return S3Store(bucket, "prefix", client, part_size=5 * 1024 * 1024, max_concurrency=4)


def test_put_read_stat_delete(store):
    store.put_bytes("a/b/c.bin", b"hello")
    assert store.read_bytes("a/b/c.bin") == b"hello"
    assert store.stat("a/b/c.bin").size == 5
    assert store.stat("a/b/missing") is None
    assert store.read_if_exists("a/b/c.bin") == b"hello" and store.read_if_exists("a/b/missing") is None
    store.delete("a/b/c.bin")
    assert not store.exists("a/b/c.bin")


def test_ranged_and_seekable_reads(store):
    data = bytes(range(256)) * 100
    store.put_bytes("r.bin", data)
    with store.open_range("r.bin", 1000, 1100) as f:
        assert f.read() == data[1000:1100]
    with store.open_range("r.bin", 25000) as f:
        assert f.read() == data[25000:]
    with store.open_seekable("r.bin") as f:
        f.seek(-10, 2)
        assert f.read() == data[-10:]
        f.seek(5)
        assert f.read(3) == data[5:8]


def test_a_seekable_read_never_mixes_two_versions_of_an_object(store):
    """A manifest republished while someone reads it: the reader gets the version it opened (local: the open file)
    or a clear error (S3: each ranged GET carries the ETag first seen), never bytes of both."""
    old, new = b"a" * (3 * 1024 * 1024), b"b" * (3 * 1024 * 1024)
    store.put_bytes("m.parquet", old)
    with store.open_seekable("m.parquet") as f:
        assert f.read(1024) == b"a" * 1024
        store.put_bytes("m.parquet", new)
        f.seek(2 * 1024 * 1024)
        if isinstance(store, S3Store):
            with pytest.raises(StoreError, match="m.parquet.*replaced while it was being read"):
                f.read(1024)
        else:
            assert f.read(1024) == b"a" * 1024
    assert store.read_bytes("m.parquet") == new


def test_multipart_object_is_published_only_on_commit(store):
    big = os.urandom(12 * 1024 * 1024 + 123)  # more than two S3 parts
    with store.writer("big/obj.bin") as w:
        w.write(big[: 7 * 1024 * 1024])
        assert store.stat("big/obj.bin") is None, "a partial object must never be visible"
        w.write(big[7 * 1024 * 1024 :])
    assert store.read_bytes("big/obj.bin") == big


def test_writes_with_deferred_durability_publish_the_same_way(store):
    store.put_bytes("d/x.jpg", b"image bytes", durable=False)
    with store.writer("d/y.bin", durable=False) as w:
        w.write(b"streamed")
        assert store.stat("d/y.bin") is None, "a partial object must never be visible"
    store.sync()
    assert store.read_bytes("d/x.jpg") == b"image bytes"
    assert store.read_bytes("d/y.bin") == b"streamed"


def test_local_store_remakes_folders_removed_behind_its_back(local_store, tmp_path):
    """The store remembers the folders it made; one removed meanwhile (data/ cleared by hand, .tmp/ too) is made
    again instead of failing the write."""
    store = local_store
    store.put_bytes("data/a/1.jpg", b"1")
    assert (tmp_path / "store" / LocalStore.TMP_DIR).exists() != store.unnamed_files
    shutil.rmtree(tmp_path / "store" / "data")
    shutil.rmtree(tmp_path / "store" / LocalStore.TMP_DIR, ignore_errors=True)
    store.put_bytes("data/a/2.jpg", b"2", durable=False)
    assert store.read_bytes("data/a/2.jpg") == b"2"
    assert [o.key for o in store.list("data/")] == ["data/a/2.jpg"]


def test_failed_write_leaves_nothing(store):
    with pytest.raises(RuntimeError):
        with store.writer("fail/obj.bin") as w:
            w.write(os.urandom(11 * 1024 * 1024))
            raise RuntimeError("connection dropped")
    assert store.stat("fail/obj.bin") is None
    assert list(store.list("fail/")) == []
    if isinstance(store, LocalStore):
        assert list((store.root / ".tmp").iterdir()) == []
    else:
        assert store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []


def test_list_is_prefix_scan_in_key_order(store):
    for k in ("x/2.bin", "x/1.bin", "x/sub/3.bin", "xy/4.bin", "y/5.bin"):
        store.put_bytes(k, b"1")
    assert [o.key for o in store.list("x/")] == ["x/1.bin", "x/2.bin", "x/sub/3.bin"]
    assert [o.key for o in store.list("x")] == ["x/1.bin", "x/2.bin", "x/sub/3.bin", "xy/4.bin"]
    assert store.delete_prefix("x/") == 3
    assert [o.key for o in store.list("x")] == ["xy/4.bin"]


@pytest.mark.parametrize("key", ["../escape", "/abs", "a//b", "a/./b", "a\\b", ""])
def test_unsafe_keys_are_refused(store, key):
    with pytest.raises(StoreError, match="unsafe object key"):
        store.put_bytes(key, b"x")


def test_open_store_urls(tmp_path):
    assert isinstance(open_store(tmp_path.as_uri()), LocalStore)
    with pytest.raises(StoreError, match="absolute"):
        open_store("relative/path")
    with pytest.raises(StoreError, match="unsupported scheme"):
        open_store("gs://bucket/x")


def test_missing_bucket_error_names_the_store(moto_endpoint):
    client = s3_client(
        endpoint_url=moto_endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    store = S3Store("no-such-bucket-here", "p", client)
    with pytest.raises(StoreError, match=r"s3://no-such-bucket-here/p/k.*NoSuchBucket"):
        store.put_bytes("k", b"x")


def test_bookkeeping_reads_cost_one_request_each_on_s3(moto_endpoint):
    """A state record or a manifest is read with one GET, found or not: no HEAD first, no ranged reads of a footer.
    Counted at the client's HTTP layer (every request botocore sends)."""
    import pyarrow as pa

    from mgdata import manifest
    from mgdata.run import put_json, read_json

    store = new_s3_store(moto_endpoint)
    rows = [
        {"path": f"x/{i}.jpg", "bytes": i, "status": "ok", "origin": "a.zip", "run_id": "r"}
        for i in range(3000)
    ]
    put_json(store, "state/x.json", {"a": 1})
    manifest.write_table(store, "manifests/x.parquet", pa.Table.from_pylist(rows, schema=manifest.SCHEMA))
    sent: list[str] = []
    store.client.meta.events.register("before-send.s3", lambda request, **_: sent.append(request.method))

    assert read_json(store, "state/x.json") == {"a": 1} and read_json(store, "state/none.json") is None
    assert manifest.read_table(store, "manifests/x.parquet", columns=["path"]).num_rows == 3000
    assert manifest.read_table(store, "manifests/none.parquet") is None
    assert sent == ["GET"] * 4


def test_source_manifests_read_each_version_once_into_local_copies(moto_endpoint, tmp_path):
    """Assemble and verify read every manifest through local copies named by ETag: one listing per task, a GET only
    for a version not read before; a version replaced after the listing and not copied is read as it is now."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mgdata import manifest

    def table(n: int, salt: str) -> pa.Table:
        rows = [{"path": f"x/{salt}{i}.jpg", "bytes": i, "status": "ok", "origin": "a.zip", "run_id": "r"}
                for i in range(n)]  # fmt: skip
        return pa.Table.from_pylist(rows, schema=manifest.SCHEMA)

    store = new_s3_store(moto_endpoint)
    manifest.write_table(store, manifest.source_key("a"), table(50, "a"))
    manifest.write_table(store, manifest.source_key("b"), table(20, "b"))
    manifest.write_table(store, "manifests/parts/a/f.zip/0.parquet", table(5, "p"))
    sent: list[str] = []
    store.client.meta.events.register(
        "before-send.s3",
        lambda request, **_: sent.append("LIST" if "list-type" in request.url else request.method),
    )
    copies = tmp_path / "copies"

    first = manifest.SourceManifests(store, copies)
    assert first.read("a").equals(table(50, "a")) and first.read("b", ["path"]).num_rows == 20
    assert first.read("none") is None
    assert sent == ["LIST", "GET", "GET"]
    sent.clear()
    again = manifest.SourceManifests(store, copies)  # the next task: nothing read again
    assert again.read("a").equals(table(50, "a")) and again.read("b").equals(table(20, "b"))
    assert sent == ["LIST"]

    manifest.write_table(store, manifest.source_key("a"), table(60, "a"))  # a finalize republishes it
    sent.clear()
    assert manifest.SourceManifests(store, copies).read("a").equals(table(60, "a"))
    assert sent == ["LIST", "GET"] and len(list(copies.glob("a.*.parquet"))) == 1

    fresh = tmp_path / "fresh"  # no copy of the listed version
    listed = manifest.SourceManifests(store, fresh)
    listed.read("b")  # the listing is taken here
    manifest.write_table(store, manifest.source_key("a"), table(70, "a"))
    assert listed.read("a").equals(table(70, "a"))  # the listed version is gone: read as it is now, not kept
    assert not list(fresh.glob("a.*")) and not list(fresh.glob(".*.tmp"))
    assert manifest.SourceManifests(store, copies).read("a").equals(table(70, "a"))

    (damaged,) = copies.glob("a.*.parquet")
    damaged.write_bytes(b"not parquet")  # a damaged copy: dropped, read again from the store, kept anew
    assert manifest.SourceManifests(store, copies).read("a").equals(table(70, "a"))
    assert pq.read_table(damaged).num_rows == 70
    (tmp_path / "a-file").write_bytes(b"")  # a folder that cannot be made: the read goes on
    assert manifest.SourceManifests(store, tmp_path / "a-file" / "copies").read("b").equals(table(20, "b"))

    local = LocalStore(tmp_path / "local")  # a local store is read in place, no copies
    manifest.write_table(local, manifest.source_key("a"), table(3, "l"))
    assert (
        manifest.SourceManifests(local, copies).read("a").num_rows == 3
        and local.read_version(manifest.source_key("a"), "no-such-etag") is None
    )
