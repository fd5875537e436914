"""Assertions about what a store holds, shared by the fetch tests."""

from __future__ import annotations

from mgdata.storage import LocalStore


def assert_nothing_published(store, key: str) -> None:
    """No object under `key`, no temp file left in a local store, no multipart upload left open on S3."""
    assert store.stat(key) is None
    if isinstance(store, LocalStore):
        assert list((store.root / LocalStore.TMP_DIR).glob("*")) == []
    else:
        uploads = store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix).get(
            "Uploads", []
        )
        assert uploads == []
