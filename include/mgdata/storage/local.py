"""The local-folder store (the embedded default): objects are files, published by rename from a temp file."""

from __future__ import annotations

import ctypes
import errno
import io
import itertools
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

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

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC  # a new temp file (its name is never reused)
_UNNAMED = os.O_WRONLY | os.O_CLOEXEC | getattr(os, "O_TMPFILE", 0)  # Linux: a file with no name until linked
# errno values of open(O_TMPFILE) on a filesystem that cannot make unnamed files
_NO_UNNAMED_ERRNOS = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL})

# errno values that mean "this name cannot exist here", as opposed to a full disk or a failing device
_NAME_ERRNOS = frozenset({errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG})


def _write_error(name: str, e: OSError) -> StoreError:
    kind = UnstorableKey if e.errno in _NAME_ERRNOS else StoreError
    return kind(f"cannot write {name}: {e.strerror or e}")


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


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


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


def _write_all(fd: int, data: bytes, durable: bool, name: str) -> None:
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    except OSError as e:  # a full disk, a size limit: name the object, not the temp file
        raise StoreError(f"cannot write {name}: {e.strerror or e}") from e


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
            self._store.publish(self._tmp, self._target)
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
    fork_safe = True  # paths and a few caches only; temp names carry the writing process's pid
    STALE_PART_SECONDS = 24 * 3600  # a temp file untouched this long is abandoned, whoever wrote it

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = self.root.as_uri()
        self._host = socket.gethostname()
        self.clean_stale_parts()
        # Extract writes thousands of small objects a second from many threads: folders already made are
        # remembered and temp names come from a counter, saving a mkdir, a stat, a uname and a urandom read per object.
        self._dirs: set[str] = set()
        self._token = uuid.uuid4().hex[:16]
        self._serial = itertools.count()
        # put_bytes makes each object as an unnamed file in its own folder, named by a link once written (Linux's
        # O_TMPFILE, linked through /proc/self/fd): on ext4 that costs about half the kernel time of a named temp
        # file renamed across folders, and a writer killed meanwhile leaves nothing behind. Turned off for good on
        # the first filesystem that refuses it.
        self.unnamed_files = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")

    def temp_path(self) -> Path:
        """A new temp file name `<host>.<pid>.<unique>.part` in `.tmp/`: the host and pid let the next LocalStore
        tell a killed writer's leftovers from a live one's (`clean_stale_parts`)."""
        return Path(self._temp_name())

    def _temp_name(self) -> str:
        tmp = f"{self.root}/{self.TMP_DIR}"
        self.ensure_dir(tmp)
        return f"{tmp}/{self._host}.{os.getpid()}.{self._token}{next(self._serial):x}.part"

    def ensure_dir(self, path: str | os.PathLike, *, known: bool = True) -> None:
        path = os.fspath(path)
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

    def open_seekable(self, key: str, info: ObjectInfo | None = None) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise StoreError(f"no object {self.describe(key)}") from None

    def new_writer(self, key: str, *, durable: bool = True) -> ObjectWriter:
        try:
            return _LocalWriter(self, self._path(key), self.describe(key), durable)
        except OSError as e:
            raise _write_error(self.describe(key), e) from e

    def put_bytes(self, key: str, data: bytes, *, durable: bool = True) -> None:
        """Bytes already in hand, in a few system calls and no file object: extract stores thousands of images a
        second, and the writer's buffered file, flush and bookkeeping cost more CPU per image than the calls
        themselves. An unnamed file in the object's folder, linked to its name once written (`unnamed_files`);
        else the writer's temp file and rename. An fsync before either when `durable`."""
        name, target = self.describe(key), f"{self.root}/{check_key(key)}"  # self._path(key), as a string
        try:
            if self.unnamed_files and self._put_unnamed(target, data, durable, name):
                return
            tmp = self._temp_name()
            try:
                fd = os.open(tmp, _CREATE, 0o666)
            except FileNotFoundError:  # .tmp/ was removed behind the store's back since it was made
                self.ensure_dir(os.path.dirname(tmp), known=False)
                fd = os.open(tmp, _CREATE, 0o666)
        except OSError as e:
            raise _write_error(name, e) from e
        try:
            try:
                _write_all(fd, data, durable, name)
            finally:
                os.close(fd)
            self.publish(tmp, target)
        except OSError as e:
            _unlink(tmp)
            raise _write_error(name, e) from e
        except BaseException:
            _unlink(tmp)
            raise

    def _put_unnamed(self, target: str, data: bytes, durable: bool, name: str) -> bool:
        """Write `data` as an unnamed file in the target's folder and link it to the target's name: False, with
        nothing written, where this filesystem makes no unnamed files."""
        folder = os.path.dirname(target)
        self.ensure_dir(folder)
        try:
            fd = os.open(folder, _UNNAMED, 0o666)
        except FileNotFoundError:  # the folder was removed behind the store's back since it was made
            self.ensure_dir(folder, known=False)
            fd = os.open(folder, _UNNAMED, 0o666)
        except OSError as e:
            if e.errno not in _NO_UNNAMED_ERRNOS:
                raise
            self.unnamed_files = False
            return False
        try:
            _write_all(fd, data, durable, name)
            # linkat(AT_SYMLINK_FOLLOW) on the fd's /proc entry; the path is absolute, so `src_dir_fd` (which makes
            # os.link call linkat) is not consulted
            fd_path = f"/proc/self/fd/{fd}"
            try:
                os.link(fd_path, target, src_dir_fd=fd, follow_symlinks=True)
            except FileExistsError:  # an object replaced: linked under a temp name, then renamed over it
                tmp = self._temp_name()
                os.link(fd_path, tmp, src_dir_fd=fd, follow_symlinks=True)
                try:
                    self.publish(tmp, target)
                except BaseException:
                    _unlink(tmp)
                    raise
        finally:
            os.close(fd)
        return True

    def publish(self, tmp: str | os.PathLike, target: str | os.PathLike) -> None:
        """Rename a written temp file to its object's path, making the folder first if needed."""
        folder = os.path.dirname(target)
        self.ensure_dir(folder)
        try:
            os.replace(tmp, target)
        except FileNotFoundError:  # its folder was removed behind the store's back since it was made
            self.ensure_dir(folder, known=False)
            os.replace(tmp, target)

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
