"""Materialise the trainer's `data/` tree from the store.

From a local store on the same filesystem every file is a hardlink (no bytes copied, instant); across filesystems it
is a copy, and from S3 a download. A file already in place with the right size is left alone, so re-running is cheap,
and files under a source's layout prefixes that its manifest no longer lists are removed, so the tree is exact.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import uuid
from collections import Counter, deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mgdata.storage import Store

WORKERS = 16
SKIPPED_LISTED = 500  # skipped paths named in the report
TMP_SUFFIX = ".tmp"  # `.<name>.<random>.tmp`: a file being placed; a killed run's are removed by the next


def is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def source_root(store: Store, prefix: str = "data/") -> str | None:
    """The folder behind `prefix` when the store is a local folder (files are hardlinked from it), else None."""
    base = store.local_path(prefix.rstrip("/"))
    return None if base is None else str(base)


def in_place(dst: str, src: str | None, size: int) -> bool:
    """The file `dst` is already the store's: a hardlink of `src` (the same inode), or, from a store that is not a
    local folder (`src` None), a file of the right size. Plain string paths and two stats: a refresh of the
    2.07M-file tree stops here for every file, so this runs inline, not on the placing threads (a thread hand-off
    and pathlib per file cost 56 µs a file, 116 s a refresh)."""
    try:
        st = os.stat(dst)
    except OSError:  # not there, or a name this filesystem cannot hold: `_place` tells which
        return False
    if stat.S_ISDIR(st.st_mode):
        return False
    if src is None:
        return st.st_size == size
    try:
        return os.stat(src).st_ino == st.st_ino
    except OSError:
        return False


def _place(store: Store, root: Path, path: str, size: int, prefix: str = "data/") -> str:
    """Link, copy or download one file into place (`_place_all` has already found it missing or different)."""
    return _place_key(store, f"{prefix}{path}", root / path)


def place_object(store: Store, key: str, size: int, dst: str | os.PathLike) -> str:
    """One store object at `dst` (a training JSON in a recipe's tree): "unchanged" when it is already there, else
    linked, copied or downloaded like every file of a tree."""
    src = store.local_path(key)
    if in_place(str(dst), None if src is None else str(src), size):
        return "unchanged"
    return _place_key(store, key, Path(dst))


def _place_key(store: Store, key: str, dst: Path) -> str:
    src = store.local_path(key)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name[:200]}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}"
    try:
        if src is not None:
            try:
                os.link(src, tmp)
                how = "linked"
            except OSError:  # another filesystem, or links not allowed
                shutil.copyfile(src, tmp)
                how = "copied"
        else:
            with store.open_range(key) as body, open(tmp, "wb") as out:
                shutil.copyfileobj(body, out, 1024 * 1024)
            how = "downloaded"
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return how


def _place_or_skip(
    store: Store, root: Path, path: str, size: int, prefix: str = "data/"
) -> tuple[str, dict | None]:
    """Place one file; a name this filesystem cannot hold (a file where a folder must be, or the other way round;
    a name too long) is skipped with the reason, not a failure of the whole tree."""
    try:
        return _place(store, root, path, size, prefix), None
    except OSError as e:
        if e.errno not in _NAME_ERRNOS:
            raise
        return "skipped", {"path": path, "error": e.strerror or str(e)}


_NAME_ERRNOS = frozenset({errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG})


def _sweep(root: Path, prefixes: list[str], wanted: set[str]) -> int:
    """Remove files under `prefixes` that are not wanted (stale images, temp files of a killed run), then the
    folders left empty, so a path that was a folder can become a file. Returns the files removed."""
    removed = 0
    for prefix in prefixes:
        top = root / prefix
        if not top.is_dir():
            continue
        cut = len(str(root)) + 1
        for dirpath, dirnames, names in os.walk(top, topdown=False):
            rel_dir = dirpath[cut:].replace(os.sep, "/")  # string work: this visits every file of the tree
            for name in names:
                if (f"{rel_dir}/{name}" if rel_dir else name) not in wanted or is_temp(name):
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1 - is_temp(name)
            for name in dirnames:
                try:
                    (Path(dirpath) / name).rmdir()
                except OSError:  # not empty: it holds wanted files
                    pass
    return removed


def materialize(
    store: Store,
    root: str | os.PathLike,
    files: list[tuple[str, int]],
    prefixes: list[str],
    prefix: str = "data/",
) -> dict:
    """Make `root/<path>` exist for every (path, size) in `files` (store keys `prefix<path>`); drop other files
    under `prefixes`.

    Safe to run again after a kill at any point: the tree is a function of `files`, every file is placed through
    a temp name and a rename, and the temp files of a killed run are swept with the stale files. What the
    filesystem cannot hold is skipped and reported (`skipped`, `skipped_paths`), never a failure of the rest."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    wanted = {p for p, _ in files}
    removed = _sweep(root, prefixes, wanted)
    del wanted
    outcome, skipped = _place_all(store, root, files, prefix)
    out = {"root": str(root), "files": len(files), "removed": removed, **outcome}
    if skipped:
        out["skipped_paths"] = skipped
    return out


def add_outcome(total: dict, part: dict) -> dict:
    """Add one `materialize` outcome (one source's prefixes) into the run's: counts summed, the first
    SKIPPED_LISTED skipped paths kept."""
    for key, value in part.items():
        if key == "skipped_paths":
            total[key] = sorted(total.get(key, []) + value, key=lambda s: s["path"])[:SKIPPED_LISTED]
        elif isinstance(value, int):
            total[key] = total.get(key, 0) + value
    return total


def _place_all(
    store: Store, root: Path, files: Iterable[tuple[str, int]], prefix: str = "data/"
) -> tuple[Counter, list[dict]]:
    """Place `files` (store keys `prefix<path>`) under `root`: a file already in place is counted here, inline
    (`in_place`); the rest are placed on WORKERS threads with a bounded number in flight (a future per file up
    front cost 1.65 KB per file: 3.4 GB at the corpus's 2.07M). Returns the outcome counts and the first
    SKIPPED_LISTED skipped files by path; nothing per file is kept."""
    outcome: Counter = Counter()
    skipped: list[dict] = []
    root_s, src_root = str(root), source_root(store, prefix)

    def settle(future) -> None:
        how, why = future.result()
        outcome[how] += 1
        if why:
            skipped.append(why)
            if len(skipped) > 4 * SKIPPED_LISTED:  # keep the first by path, in bounded memory
                skipped.sort(key=lambda s: s["path"])
                del skipped[SKIPPED_LISTED:]

    with ThreadPoolExecutor(WORKERS) as pool:
        pending: deque = deque()
        for path, size in files:
            if in_place(f"{root_s}/{path}", None if src_root is None else f"{src_root}/{path}", size):
                outcome["unchanged"] += 1
                continue
            pending.append(pool.submit(_place_or_skip, store, root, path, size, prefix))
            if len(pending) >= 8 * WORKERS:
                settle(pending.popleft())
        while pending:
            settle(pending.popleft())
    skipped.sort(key=lambda s: s["path"])
    return outcome, skipped[:SKIPPED_LISTED]


def annotations_dir(layout_dir: str | os.PathLike) -> Path:
    """Where the annotation files land: `annotations/` beside `data/`, i.e. in the folder the trainer runs from
    (MG-LLaVA reads images from `image_folder='data'`, relative to its working directory)."""
    return Path(layout_dir).resolve().parent / "annotations"


def materialize_annotations(store: Store, layout_dir: str | os.PathLike) -> dict:
    """Place every `annotations/<path>` object of the store at `annotations_dir(layout_dir)/<path>` (hardlinks from
    a local store), e.g. `annotations/train_json/<name>.json` for a config's `data_path`."""
    root = annotations_dir(layout_dir)
    files = [(o.key[len("annotations/") :], o.size) for o in store.list("annotations/")]
    if root.is_dir():  # temp files of a killed run
        for dirpath, _, names in os.walk(root):
            for name in names:
                if is_temp(name):
                    (Path(dirpath) / name).unlink(missing_ok=True)
    outcome, skipped = _place_all(store, root, files, "annotations/")
    out = {"root": str(root), "files": len(files), **outcome}
    if skipped:
        out["skipped_paths"] = skipped
    return out
