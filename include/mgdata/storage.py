"""One small object-store interface, two backends: a local folder (the embedded default) and S3.

Every stage of the pipeline talks to a `Store`, never to a filesystem or boto3 directly, so a run behaves the same on a
laptop and against S3 or MinIO. The guarantee both backends keep: **no partial object is ever visible under its final
key**. The local store writes to a temporary file on the same filesystem and renames it into place; the S3 store streams
into a multipart upload that only becomes an object on `CompleteMultipartUpload` and is aborted on any error.

Keys are relative, `/`-separated paths such as `raw/coco/train2017.zip` or `data/coco/train2017/000000000009.jpg`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import io
import itertools
import os
import random
import shutil
import socket
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import urlparse

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


# errno values that mean "this name cannot exist here", as opposed to a full disk or a failing device
_NAME_ERRNOS = frozenset({errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG})


def _write_error(name: str, e: OSError) -> StoreError:
    kind = UnstorableKey if e.errno in _NAME_ERRNOS else StoreError
    return kind(f"cannot write {name}: {e.strerror or e}")


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


def _syncfs(path: Path) -> None:
    """Flush the filesystem holding `path` (Linux syncfs(2)); elsewhere, every filesystem (sync(2))."""
    libc = libc_or_none()
    if libc is not None and hasattr(libc, "syncfs"):
        fd = os.open(path, os.O_RDONLY)
        try:
            if libc.syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
        finally:
            os.close(fd)
    else:
        os.sync()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    try:  # a zombie (killed, not yet reaped: an orphan where PID 1 does not reap) writes nothing more
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):  # no /proc (macOS), or gone meanwhile
        return True


class Store(ABC):
    url: str

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
    def open_seekable(self, key: str) -> BinaryIO:
        """A seekable reader (for a zip's central directory); remote backends read by byte ranges."""

    def read_bytes(self, key: str) -> bytes:
        with self.open_range(key) as f:
            return f.read()

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


# --------------------------------------------------------------------------------------------------------------------
# Local folder


class _LocalWriter(ObjectWriter):
    def __init__(self, store: LocalStore, target: Path, name: str, durable: bool = True):
        self._store, self._target, self._name, self._durable = store, target, name, durable
        self._tmp = store.temp_path()
        try:
            self._f = open(self._tmp, "wb")
        except FileNotFoundError:  # .tmp/ was removed behind the store's back since it was made
            store.ensure_dir(self._tmp.parent, known=False)
            self._f = open(self._tmp, "wb")
        self.bytes_written = 0

    def write(self, data: bytes) -> int:
        try:
            n = self._f.write(data)
        except OSError as e:  # a full disk (ENOSPC), a size limit (EFBIG): name the object, not the temp file
            raise StoreError(f"cannot write {self._name}: {e.strerror or e}") from e
        self.bytes_written += n
        return n

    def commit(self) -> None:
        try:
            self._f.flush()
            if self._durable:
                os.fsync(self._f.fileno())
            self._f.close()
            self._store.ensure_dir(self._target.parent)
            try:
                os.replace(self._tmp, self._target)
            except FileNotFoundError:  # its folder was removed behind the store's back since it was made
                self._store.ensure_dir(self._target.parent, known=False)
                os.replace(self._tmp, self._target)
        except OSError as e:  # the last buffered bytes may only fail here; the temp file must not outlive it
            self.abort()
            raise _write_error(self._name, e) from e

    def abort(self) -> None:
        try:
            self._f.close()
        except OSError:  # flushing the buffered tail of a discarded object can fail on a full disk
            pass
        self._tmp.unlink(missing_ok=True)


class _FileRange(io.RawIOBase):
    """A file window [start, end) read forward only."""

    def __init__(self, path: Path, start: int, end: int | None):
        self._f = open(path, "rb")
        self._f.seek(start)
        self._left = None if end is None else max(0, end - start)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = len(b) if self._left is None else min(len(b), self._left)
        if n == 0:
            return 0
        got = self._f.readinto(memoryview(b)[:n])
        if self._left is not None:
            self._left -= got
        return got

    def close(self) -> None:
        self._f.close()
        super().close()


class LocalStore(Store):
    """Objects are files under `root`; temporary files live in `root/.tmp` so renames stay on one filesystem."""

    TMP_DIR = ".tmp"
    STALE_PART_SECONDS = 24 * 3600  # a temp file untouched this long is abandoned, whoever wrote it

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = self.root.as_uri()
        self._host = socket.gethostname()
        self.clean_stale_parts()
        # Extract writes thousands of small objects a second from many threads: folders already made are
        # remembered and temp names come from a counter, saving a mkdir, a stat, a uname and a urandom read per object.
        self._dirs: set[Path] = set()
        self._token = uuid.uuid4().hex[:16]
        self._serial = itertools.count()

    def temp_path(self) -> Path:
        """A new temp file name `<host>.<pid>.<unique>.part` in `.tmp/`: the host and pid let the next LocalStore
        tell a killed writer's leftovers from a live one's (`clean_stale_parts`)."""
        tmp = self.root / self.TMP_DIR
        self.ensure_dir(tmp)
        return tmp / f"{self._host}.{os.getpid()}.{self._token}{next(self._serial):x}.part"

    def ensure_dir(self, path: Path, *, known: bool = True) -> None:
        if known and path in self._dirs:
            return
        os.makedirs(path, exist_ok=True)
        self._dirs.add(path)

    def clean_stale_parts(self) -> list[str]:
        """Remove temp files of writers that can no longer commit them: written on this host by a process that is
        gone (a SIGKILLed task), or, from any host, untouched for `STALE_PART_SECONDS`. Returns the names removed."""
        tmp, host, removed = self.root / self.TMP_DIR, self._host, []
        try:
            entries = list(os.scandir(tmp))
        except FileNotFoundError:
            return removed
        for entry in entries:
            if not entry.name.endswith(".part"):
                continue
            writer, _, _uuid = entry.name.removesuffix(".part").rpartition(".")  # <host>.<pid>.<uuid>.part
            writer_host, _, pid = writer.rpartition(".")
            try:
                dead = writer_host == host and pid.isdigit() and not _pid_alive(int(pid))
                if dead or time.time() - entry.stat().st_mtime > self.STALE_PART_SECONDS:
                    os.unlink(entry.path)
                    removed.append(entry.name)
            except FileNotFoundError:  # its writer committed or aborted it meanwhile
                pass
        return removed

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            if e.errno == errno.ENAMETOOLONG:  # a name no file here can have
                return None
            raise
        return ObjectInfo(key, st.st_size, f"{st.st_mtime_ns:x}-{st.st_size:x}")

    def open_range(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        try:
            return io.BufferedReader(_FileRange(self._path(key), start, end), 1 * MiB)
        except FileNotFoundError:
            raise StoreError(f"no object {self.describe(key)}") from None

    def open_seekable(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise StoreError(f"no object {self.describe(key)}") from None

    def new_writer(self, key: str, *, durable: bool = True) -> ObjectWriter:
        try:
            return _LocalWriter(self, self._path(key), self.describe(key), durable)
        except OSError as e:
            raise _write_error(self.describe(key), e) from e

    def sync(self) -> None:
        try:
            _syncfs(self.root)
        except OSError as e:
            raise StoreError(f"cannot flush {self.url} to disk: {e.strerror or e}") from e

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        # Walk only the deepest directory the prefix names, then filter by the string prefix like S3 does.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        top = self.root.joinpath(*base.split("/")) if base else self.root
        if not top.is_dir():
            return
        found = []
        for dirpath, dirnames, filenames in os.walk(top):
            if Path(dirpath) == self.root:
                dirnames[:] = [d for d in dirnames if d != self.TMP_DIR]
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    found.append(key)
        for key in sorted(found):
            info = self.stat(key)
            if info is not None:
                yield info

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except (
            NotADirectoryError,
            IsADirectoryError,
        ):  # a file on the key's path, or a folder under its name:
            pass  # no object of this key
        except OSError as e:
            if e.errno != errno.ENAMETOOLONG:
                raise

    def local_path(self, key: str) -> Path:
        return self._path(key)


# --------------------------------------------------------------------------------------------------------------------
# S3 (and S3-compatible: MinIO, moto)


def _client_error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


class _S3MultipartWriter(ObjectWriter):
    """Buffers `part_size` bytes at a time and uploads parts from a small thread pool (bounded memory).

    Objects smaller than one part go up in a single PutObject; nothing exists under the key until commit.
    """

    def __init__(self, store: S3Store, key: str):
        self._store = store
        self._key = key
        self._buf = bytearray()
        self._upload_id: str | None = None
        self._parts: list[Future] = []
        self._pool: ThreadPoolExecutor | None = None
        self._slots = threading.BoundedSemaphore(store.max_concurrency + 1)
        self.bytes_written = 0

    def write(self, data: bytes) -> int:
        self._buf += data
        self.bytes_written += len(data)
        while len(self._buf) >= self._store.part_size:
            part = bytes(self._buf[: self._store.part_size])
            del self._buf[: self._store.part_size]
            self._submit(part)
        return len(data)

    def _submit(self, body: bytes) -> None:
        s = self._store
        if self._upload_id is None:
            resp = s._call(
                "CreateMultipartUpload",
                self._key,
                s.client.create_multipart_upload,
                Bucket=s.bucket,
                Key=s._full(self._key),
            )
            self._upload_id = resp["UploadId"]
            self._pool = ThreadPoolExecutor(s.max_concurrency, thread_name_prefix="s3-part")
        number = len(self._parts) + 1
        self._slots.acquire()  # back-pressure: at most max_concurrency+1 parts in memory

        def upload() -> dict:
            try:
                r = s._call(
                    "UploadPart",
                    self._key,
                    s.client.upload_part,
                    Bucket=s.bucket,
                    Key=s._full(self._key),
                    UploadId=self._upload_id,
                    PartNumber=number,
                    Body=body,
                )
                return {"PartNumber": number, "ETag": r["ETag"]}
            finally:
                self._slots.release()

        self._parts.append(self._pool.submit(upload))

    def commit(self) -> None:
        s = self._store
        if self._upload_id is None:
            s.put_bytes(self._key, bytes(self._buf))
            return
        try:
            if self._buf or not self._parts:
                self._submit(bytes(self._buf))
                self._buf.clear()
            parts = [f.result() for f in self._parts]
            s._call(
                "CompleteMultipartUpload",
                self._key,
                s.client.complete_multipart_upload,
                Bucket=s.bucket,
                Key=s._full(self._key),
                UploadId=self._upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            self.abort()
            raise
        finally:
            self._pool.shutdown(wait=True)

    def abort(self) -> None:
        self._buf.clear()
        if self._upload_id is None:
            return
        for f in self._parts:
            f.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        try:
            self._store.client.abort_multipart_upload(
                Bucket=self._store.bucket, Key=self._store._full(self._key), UploadId=self._upload_id
            )
        except Exception:  # best effort: a lifecycle rule or the next retry cleans what is left
            pass
        self._upload_id = None


class _S3RangeReader(io.RawIOBase):
    """Seekable read access to an S3 object through ranged GETs; wrap it in a BufferedReader."""

    def __init__(self, store: S3Store, key: str, size: int, etag: str | None):
        self._store, self._key, self._size, self._pos, self._etag = store, key, size, 0, etag

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, b) -> int:
        n = min(len(b), self._size - self._pos)
        if n <= 0:
            return 0
        with self._store._get_range(self._key, self._pos, self._pos + n, self._etag) as body:
            data = body.read()
        memoryview(b)[: len(data)] = data
        self._pos += len(data)
        return len(data)


class S3Store(Store):
    def __init__(
        self, bucket: str, prefix: str, client, *, part_size: int = 16 * MiB, max_concurrency: int = 8
    ):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client
        self.part_size = part_size
        self.max_concurrency = max_concurrency
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    def _full(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, op: str, key: str, fn, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except ClientError as e:
            code = _client_error_code(e)
            raise StoreError(
                f"{op} {self.describe(key)} failed: {code or 'error'}: {e.response.get('Error', {}).get('Message', '')}"
            ) from e
        except BotoCoreError as e:
            raise StoreError(f"{op} {self.describe(key)} failed: {e}") from e

    def stat(self, key: str) -> ObjectInfo | None:
        from botocore.exceptions import ClientError

        try:
            r = self.client.head_object(Bucket=self.bucket, Key=self._full(key))
        except ClientError as e:
            if _client_error_code(e) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise StoreError(f"HeadObject {self.describe(key)} failed: {_client_error_code(e)}") from e
        return ObjectInfo(key, r["ContentLength"], r.get("ETag", "").strip('"') or None)

    def open_range(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        return self._get_range(key, start, end)

    def _get_range(self, key: str, start: int, end: int | None, if_match: str | None = None) -> BinaryIO:
        """A GetObject of bytes [start, end); with `if_match`, only of the version whose ETag that is."""
        kwargs = {"Bucket": self.bucket, "Key": self._full(key)}
        if start or end is not None:
            if end is not None and end <= start:
                return io.BytesIO(b"")
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        if if_match:
            kwargs["IfMatch"] = f'"{if_match}"'
        try:
            return self._call("GetObject", key, self.client.get_object, **kwargs)["Body"]
        except StoreError as e:
            if if_match and _client_error_code(e.__cause__) in ("PreconditionFailed", "412"):
                raise StoreError(
                    f"GetObject {self.describe(key)}: the object was replaced while it was being read"
                ) from e.__cause__
            raise

    def open_seekable(self, key: str) -> BinaryIO:
        """Ranged reads of one version: each GET carries the ETag seen first, so an object replaced meanwhile (a
        manifest a finalize republishes) fails cleanly instead of mixing two versions' bytes."""
        info = self.stat(key)
        if info is None:
            raise StoreError(f"no object {self.describe(key)}")
        return io.BufferedReader(_S3RangeReader(self, key, info.size, info.etag), 1 * MiB)

    def new_writer(self, key: str, *, durable: bool = True) -> ObjectWriter:
        return _S3MultipartWriter(self, key)

    def put_bytes(self, key: str, data: bytes, *, durable: bool = True) -> None:
        """One PutObject, sent as a PUT to a presigned URL over the client's own HTTP session.

        Extract puts one object per image, so the cost per call matters: `client.put_object` spends ~1.2 ms of CPU
        per 56 KB object in botocore's event machinery (endpoint rules, user-agent assembly, an Expect: 100-continue
        round trip, a payload sha256 on http endpoints) where presigning (the same endpoint rules, addressing style,
        region and refreshed credentials) and one PUT over the same connection pool, proxies and TLS settings cost
        ~0.65 ms. Retries follow the client's configured attempt budget with botocore's standard backoff; error codes
        come from S3's XML error body. The presigned URL carries a signature, so it never enters a message.
        """
        url = self._call(
            "PutObject", key, self.client.generate_presigned_url, ClientMethod="put_object",
            Params={"Bucket": self.bucket, "Key": self._full(key)}, ExpiresIn=_PRESIGN_SECONDS,
        )  # fmt: skip
        _presigned_put(self.client, url, data, lambda why: f"PutObject {self.describe(key)} failed: {why}")

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        full = (f"{self.prefix}/" if self.prefix else "") + prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full)
        try:
            for page in pages:
                for o in page.get("Contents", []):
                    yield ObjectInfo(o["Key"][strip:], o["Size"], o.get("ETag", "").strip('"') or None)
        except Exception as e:
            raise StoreError(
                f"ListObjectsV2 {self.describe(prefix)} failed: {_client_error_code(e) or e}"
            ) from e

    def delete(self, key: str) -> None:
        self._call("DeleteObject", key, self.client.delete_object, Bucket=self.bucket, Key=self._full(key))

    def abort_uploads(self, key: str) -> int:
        full, aborted = self._full(key), 0
        listing = self._call(
            "ListMultipartUploads", key, self.client.list_multipart_uploads, Bucket=self.bucket, Prefix=full
        )
        for upload in listing.get("Uploads", []):
            if upload["Key"] == full:  # the prefix also matches longer keys, which are not ours
                self._call(
                    "AbortMultipartUpload", key, self.client.abort_multipart_upload,
                    Bucket=self.bucket, Key=full, UploadId=upload["UploadId"],
                )  # fmt: skip
                aborted += 1
        return aborted

    def delete_prefix(self, prefix: str) -> int:
        keys = [self._full(o.key) for o in self.list(prefix)]
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            self._call(
                "DeleteObjects",
                prefix,
                self.client.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": batch, "Quiet": True},
            )
        return len(keys)


_PRESIGN_SECONDS = 900
_RETRY_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
}


def _xml_field(body: bytes, name: str) -> str:
    start, end = body.find(f"<{name}>".encode()), body.find(f"</{name}>".encode())
    return body[start + len(name) + 2 : end].decode("utf-8", "replace") if 0 <= start < end else ""


def _presigned_put(client, url: str, data: bytes, message) -> None:
    """PUT `data` to a presigned S3 URL with the client's retry budget; raises StoreError(message(reason))."""
    from botocore.awsrequest import AWSRequest
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError

    retries = client.meta.config.retries or {}
    attempts = retries.get("total_max_attempts") or retries.get("max_attempts", 4) + 1
    http = client._endpoint.http_session  # the client's pool, proxies, TLS and timeouts
    for attempt in range(1, attempts + 1):
        try:
            resp = http.send(AWSRequest("PUT", url, data=data).prepare())
        except (BotoConnectionError, HTTPClientError) as e:
            reason, retry = f"{type(e).__name__} (the endpoint did not answer)", True
        else:
            if resp.status_code == 200:
                return
            code = _xml_field(resp.content, "Code") or str(resp.status_code)
            reason = f"{code}: {_xml_field(resp.content, 'Message')}"
            retry = resp.status_code in (429, 500, 502, 503, 504) or code in _RETRY_CODES
        if not retry or attempt == attempts:
            raise StoreError(message(reason))
        time.sleep(min(20.0, random.random() * 2.0 ** (attempt - 1)))  # botocore's standard mode backoff


def s3_client(
    *,
    endpoint_url: str | None = None,
    region_name: str | None = None,
    aws_access_key_id: str | None = None,
    aws_secret_access_key: str | None = None,
    aws_session_token: str | None = None,
    max_pool_connections: int = 32,
    session=None,
    config=None,
):
    """The one place S3 clients are made.

    Checksums only "when_required": MinIO and other S3-compatible stores reject or mishandle the CRC trailers that
    botocore sends by default since 1.36. The connection pool is sized to the concurrency we use.
    """
    import boto3
    from botocore.config import Config

    ours = Config(
        max_pool_connections=max_pool_connections,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"mode": "standard", "max_attempts": 8},
    )
    config = ours.merge(config) if config is not None else ours
    session = session or boto3.session.Session(
        aws_access_key_id=aws_access_key_id,
        aws_secret_access_key=aws_secret_access_key,
        aws_session_token=aws_session_token,
        region_name=region_name,
    )
    return session.client(
        "s3", endpoint_url=endpoint_url, region_name=region_name or session.region_name, config=config
    )


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
