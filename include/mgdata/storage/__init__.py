"""One small object-store interface, two backends: a local folder (the embedded default) and S3.

Every stage of the pipeline talks to a `Store`, never to a filesystem or boto3 directly, so a run behaves the same on a
laptop and against S3 or MinIO. The guarantee both backends keep: **no partial object is ever visible under its final
key**. The local store writes to a temporary file on the same filesystem and renames it into place; the S3 store streams
into a multipart upload that only becomes an object on `CompleteMultipartUpload` and is aborted on any error.

The package follows that seam: `base` (the interface, errors, key rules), `local`, `s3` and `multipart` (the S3
writer); `open_store` picks a backend from a URL.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from urllib.parse import urlparse

from mgdata.storage.base import (
    MiB,
    ObjectInfo,
    ObjectWriter,
    Store,
    StoreError,
    UnstorableKey,
    check_key,
    libc_or_none,
)
from mgdata.storage.local import LocalStore
from mgdata.storage.s3 import S3Store, s3_client

__all__ = [
    "LocalStore",
    "MiB",
    "ObjectInfo",
    "ObjectWriter",
    "S3Store",
    "Store",
    "StoreError",
    "UnstorableKey",
    "check_key",
    "libc_or_none",
    "open_store",
    "s3_client",
]


def open_store(url: str, *, client=None, **s3_options) -> Store:
    """`file:///abs/path` (or a plain path) → LocalStore; `s3://bucket/prefix` → S3Store."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme else url
        if not PurePosixPath(path).is_absolute():
            raise StoreError(f"store URL {url!r}: a local store needs an absolute path (file:///abs/path)")
        return LocalStore(path)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StoreError(f"store URL {url!r} names no bucket (s3://bucket/prefix)")
        return S3Store(
            parsed.netloc, parsed.path, client if client is not None else s3_client(), **s3_options
        )
    raise StoreError(f"store URL {url!r}: unsupported scheme {parsed.scheme!r} (use file:// or s3://)")
