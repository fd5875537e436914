"""Materialise the trainer's `data/` tree from the store.

From a local store on the same filesystem every file is a hardlink (no bytes copied, instant); across filesystems it
is a copy, and from S3 a download. A file already in place with the right size is left alone, so re-running is cheap,
and files under a source's layout prefixes that its manifest no longer lists are removed, so the tree is exact.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mgdata.storage import Store

WORKERS = 16


def _place(store: Store, root: Path, path: str, size: int, prefix: str = "data/") -> str:
    dst = root / path
    src = store.local_path(f"{prefix}{path}")
    try:
        st = dst.stat()
    except FileNotFoundError:
        st = None
    if st is not None:
        if src is not None and st.st_ino == src.stat().st_ino:
            return "unchanged"
        if src is None and st.st_size == size:
            return "unchanged"
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.{uuid.uuid4().hex[:8]}.tmp"
    if src is not None:
        try:
            os.link(src, tmp)
            how = "linked"
        except OSError:  # another filesystem, or links not allowed
            shutil.copyfile(src, tmp)
            how = "copied"
    else:
        with store.open_range(f"{prefix}{path}") as body, open(tmp, "wb") as out:
            shutil.copyfileobj(body, out, 1024 * 1024)
        how = "downloaded"
    os.replace(tmp, dst)
    return how


def materialize(
    store: Store, root: str | os.PathLike, files: list[tuple[str, int]], prefixes: list[str]
) -> dict:
    """Make `root/<path>` exist for every (path, size) in `files`; drop other files under `prefixes`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(WORKERS) as pool:
        outcome = Counter(pool.map(lambda f: _place(store, root, f[0], f[1]), files))
    wanted = {p for p, _ in files}
    removed = 0
    for prefix in prefixes:
        top = root / prefix
        if not top.is_dir():
            continue
        for dirpath, _, names in os.walk(top):
            for name in names:
                rel = (Path(dirpath) / name).relative_to(root).as_posix()
                if rel not in wanted:
                    (Path(dirpath) / name).unlink()
                    removed += 1
    return {"root": str(root), "files": len(files), "removed": removed, **outcome}


def annotations_dir(layout_dir: str | os.PathLike) -> Path:
    """Where the annotation files land: `annotations/` beside `data/`, i.e. in the folder the trainer runs from
    (MG-LLaVA reads images from `image_folder='data'`, relative to its working directory)."""
    return Path(layout_dir).resolve().parent / "annotations"


def materialize_annotations(store: Store, layout_dir: str | os.PathLike) -> dict:
    """Place every `annotations/<path>` object of the store at `annotations_dir(layout_dir)/<path>` (hardlinks from
    a local store), e.g. `annotations/train_json/<name>.json` for a config's `data_path`."""
    root = annotations_dir(layout_dir)
    files = [(o.key[len("annotations/") :], o.size) for o in store.list("annotations/")]
    with ThreadPoolExecutor(WORKERS) as pool:
        outcome = Counter(pool.map(lambda f: _place(store, root, f[0], f[1], "annotations/"), files))
    return {"root": str(root), "files": len(files), **outcome}
