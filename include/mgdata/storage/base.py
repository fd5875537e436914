"""The object-store interface every pipeline stage talks to, and the errors and key rules both backends share.

The guarantee every backend keeps: **no partial object is ever visible under its final key**. Keys are relative,
`/`-separated paths such as `raw/coco/train2017.zip` or `data/coco/train2017/000000000009.jpg`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MiB = 1024 * 1024


@functools.cache
def libc_or_none() -> ctypes.CDLL | None:
    """The C library, looked up on the first flush (find_library runs a subprocess: not at import, which DAG
    parsing pays)."""
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name, use_errno=True) if name else None


class StoreError(RuntimeError):
    """A store operation failed. The message names the store and the key, never credentials."""


class UnstorableKey(StoreError):
    """The store cannot hold an object under this key, whatever is retried: a local folder where a file of the
    key's name or a folder on its path is already the other kind, or a name longer than the filesystem allows.
    One member's problem, not the run's."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str | None = None


def check_key(key: str) -> str:
    """Refuse keys that could escape the store root: absolute paths, `..`, empty parts, backslashes."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"unsafe object key {key!r}")
    return key


class ObjectWriter(ABC):
    """A write-only binary stream whose bytes become an object only when `commit()` is called."""

    bytes_written: int = 0

    @abstractmethod
    def write(self, data: bytes) -> int: ...

    @abstractmethod
    def commit(self) -> None: ...

    @abstractmethod
    def abort(self) -> None: ...


class Store(ABC):
    url: str
    # A process forked from one using this store object may go on using it (extract's worker processes do). Not
    # so for a store holding pooled network connections, which parent and child would then share.
    fork_safe: bool = False

    def describe(self, key: str) -> str:
        """The full address of a key, for messages and reports."""
        return f"{self.url.rstrip('/')}/{key}"

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None: ...

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    @abstractmethod
    def open_range(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        """A forward-only stream of bytes [start, end) of an object (end exclusive, None = to the end)."""

    @abstractmethod
    def open_seekable(self, key: str, info: ObjectInfo | None = None) -> BinaryIO:
        """A seekable reader (for a zip's central directory); remote backends read by byte ranges. `info`: what
        `stat(key)` just said, so a remote backend need not ask again."""

    def read_bytes(self, key: str) -> bytes:
        with self.open_range(key) as f:
            return f.read()

    def read_if_exists(self, key: str) -> bytes | None:
        """The whole object, or None when there is none. Remote backends answer both with one request (a GET that
        may find nothing), not a HEAD and then a GET: bookkeeping reads a few small objects per source and run."""
        if self.stat(key) is None:
            return None
        return self.read_bytes(key)

    def read_version(self, key: str, etag: str) -> bytes | None:
        """The whole object if it is still the version a listing gave this ETag, else None (replaced or gone since).
        Remote backends ask with one conditional GET."""
        info = self.stat(key)
        return self.read_bytes(key) if info is not None and info.etag == etag else None

    @abstractmethod
    def new_writer(self, key: str, *, durable: bool = True) -> ObjectWriter:
        """`durable=False`: the object is published as atomically, but may be lost in a power cut until `sync()`."""

    @contextmanager
    def writer(self, key: str, *, durable: bool = True) -> Iterator[ObjectWriter]:
        """Stream into an object; published on a clean exit, discarded on an exception."""
        w = self.new_writer(check_key(key), durable=durable)
        try:
            yield w
        except BaseException:
            w.abort()
            raise
        w.commit()

    def put_bytes(self, key: str, data: bytes, *, durable: bool = True) -> None:
        with self.writer(key, durable=durable) as w:
            w.write(data)

    def sync(self) -> None:
        """Make every object published so far survive a power cut (a barrier after `durable=False` writes).

        Extract writes a shard's images with `durable=False` and calls this once before writing the shard's manifest
        part, so a manifest row never names an image that a crash could still take away: one flush per shard
        instead of one per image (an fsync per 160 KB image cost a third of a millisecond of CPU and more of wall
        time). Objects in S3 are durable once their PUT returns, so only the local folder has work to do.
        """
        return None

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        with open(path, "rb") as src, self.writer(key) as w:
            shutil.copyfileobj(src, w, 4 * MiB)

    @abstractmethod
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Objects whose key starts with `prefix`, in key order."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    def delete_prefix(self, prefix: str) -> int:
        keys = [o.key for o in self.list(prefix)]
        for k in keys:
            self.delete(k)
        return len(keys)

    def local_path(self, key: str) -> Path | None:
        """The file behind a key when the store is a local folder, so layouts can hardlink instead of copy."""
        return None

    def abort_uploads(self, key: str) -> int:
        """Abort unfinished uploads left under `key` by a killed writer; call it only where no other writer of the
        same key can be running (a task that owns the key). Returns how many were aborted."""
        return 0
