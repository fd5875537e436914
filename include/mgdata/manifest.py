"""Manifests: one row per image, as Parquet in the store.

Each extract shard writes a small part (`manifests/parts/<source>/<file>/<shard>.parquet`); finalize merges a source's
parts into `manifests/<source>.parquet` (the latest state of that source), and the diff between the old and the new
merged manifest is what a run changed. Columns are a contract (DESIGN §4); `COLUMNS` says what each means (the docs' manifest reference is made from it).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mgdata.storage import Store

log = logging.getLogger(__name__)

# jemalloc, returning freed pages at once: finalize's merge and diff of a 1.3M-row manifest peak several hundred MB
# above what they keep, and mimalloc (pyarrow's default here) holds on to that high-water mark for the rest of the
# task. Measured with bench/bookkeeping.py (docs/performance.md).
try:
    pa.set_memory_pool(pa.jemalloc_memory_pool())
    pa.jemalloc_set_decay_ms(0)
except (
    NotImplementedError,
    pa.ArrowNotImplementedError,
):  # a pyarrow built without jemalloc keeps its default
    pass

# One row per image the source's archives or URL list hold; what each column means (the docs' manifest reference and
# its JSON Schema are generated from this and SCHEMA).
COLUMNS: dict[str, str] = {
    "path": "the image's path relative to `data/`, as the trainer's JSON names it",
    "bytes": "size of the stored bytes (null when nothing was stored: a dead URL)",
    "sha256": "sha256 of the stored bytes (null when nothing was stored)",
    "format": "Pillow's name for the format of the original bytes (null when they were not an image)",
    "width": "width in pixels of frame 0 (null when the image did not open)",
    "height": "height in pixels of frame 0 (null when the image did not open)",
    "status": "`ok` (stored as it came), `normalized` (re-encoded to what its name promises), "
    "`invalid` (quarantined, reason in `error`) or `missing` (never delivered)",
    "error": "why the image is invalid or missing; for `normalized` (and large `ok` images) a note; else null",
    "origin": "where the bytes came from: `raw/<source>/<file>!<member>` or the URL (without userinfo or query)",
    "run_id": "the Airflow run that produced the row",
}
SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("format", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("origin", pa.string()),
        ("run_id", pa.string()),
    ]
)
STATUSES = ("ok", "normalized", "invalid", "missing")
USABLE = ("ok", "normalized")
_JSON_TYPES = {pa.string(): "string", pa.int64(): "integer", pa.int32(): "integer"}
_REQUIRED = (
    "path",
    "status",
    "origin",
    "run_id",
)  # every row has these; the rest is null where the meaning says


def row_schema() -> dict:
    """The JSON Schema of one manifest row (Parquet row as a dict), from SCHEMA and COLUMNS."""
    properties = {}
    for field in SCHEMA:
        kind = _JSON_TYPES[field.type]
        prop = {
            "type": kind if field.name in _REQUIRED else [kind, "null"],
            "description": COLUMNS[field.name],
        }
        if field.name == "status":
            prop["enum"] = list(STATUSES)
        if kind == "integer":
            prop["minimum"] = 0
        properties[field.name] = prop
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "manifest.schema.json",
        "title": "manifest row",
        "description": "A source's manifest, `manifests/<source>.parquet`, holds one row per image its archives or "
        "URL list hold, whatever became of it.",
        "type": "object",
        "properties": properties,
        "required": list(SCHEMA.names),
        "additionalProperties": False,
    }


def source_key(source: str) -> str:
    return f"manifests/{source}.parquet"


def parts_prefix(source: str, file: str | None = None) -> str:
    return f"manifests/parts/{source}/" + (f"{file}/" if file else "")


def to_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def write_table(store: Store, key: str, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table.cast(SCHEMA), buf, compression="zstd")
    store.put_bytes(key, buf.getvalue())


def read_table(store: Store, key: str, columns: list[str] | None = None) -> pa.Table | None:
    """The table at `key`, None when there is no such object.

    A local manifest is read in place. A remote one comes in one GET, whole: a manifest is about 36 bytes per image
    (17 MB at the largest source's 469K rows, a fifth of the table it decodes to), and ranged reads of its footer
    and row groups would cost a HEAD and two or more GETs each time a stage reads it."""
    if store.local_path(key) is None:
        data = store.read_if_exists(key)
        return None if data is None else pq.read_table(pa.BufferReader(data), schema=SCHEMA, columns=columns)
    info = store.stat(key)
    if info is None:
        return None
    with store.open_seekable(key, info) as f:
        return pq.read_table(f, schema=SCHEMA, columns=columns)


class SourceManifests:
    """The sources' manifests as assemble and verify read them, each task every source's once.

    On a remote store with a folder for local copies (`Settings.manifest_copies`), one listing of `manifests/` gives
    every manifest's ETag (a source it does not name has none): the task reads the manifests as listed. A version
    read before comes from its copy. Any other is read with one GET of that exact version (`Store.read_version`),
    and its copy is kept for the next task; one replaced since the listing is read as it is now, and not kept. A
    copy holds the bytes its ETag names, so a read from it equals a read of that version from the store. Without
    the folder, or on a local store, each manifest is read from the store (a local one in place)."""

    def __init__(self, store: Store, copies: Path | None):
        self.store = store
        self.copies = copies if copies is not None and store.local_path(source_key("_")) is None else None
        self._listed: dict[str, str | None] | None = None

    def read(self, source: str, columns: list[str] | None = None) -> pa.Table | None:
        key = source_key(source)
        if self.copies is None:
            return read_table(self.store, key, columns)
        if self._listed is None:
            self._listed = {o.key: o.etag for o in self.store.list("manifests/") if o.key.count("/") == 1}
        if key not in self._listed:
            return None
        etag = self._listed[key]
        if not etag:
            return read_table(self.store, key, columns)
        name = f"{source}.{hashlib.sha256(etag.encode()).hexdigest()[:20]}.parquet"
        copy = self.copies / name
        if copy.is_file():
            try:
                return pq.read_table(copy, schema=SCHEMA, columns=columns)
            except (OSError, pa.ArrowException) as e:  # a damaged copy: dropped, read again from the store
                log.warning("manifest copy %s unreadable (%s): reading %s", copy, e, self.store.describe(key))
                copy.unlink(missing_ok=True)
        data = self.store.read_version(key, etag)
        if data is None:  # replaced (or removed) since the listing
            return read_table(self.store, key, columns)
        self._keep(source, copy, data)
        return pq.read_table(pa.BufferReader(data), schema=SCHEMA, columns=columns)

    def _keep(self, source: str, copy: Path, data: bytes) -> None:
        """The copy, published by a rename (a task killed meanwhile leaves a temp file, never half a copy); the
        source's older copies go. A folder that cannot take it costs the next task a GET, never this one's run."""
        tmp = copy.with_name(f".{copy.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            copy.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, copy)
            for old in copy.parent.glob(f"{source}.*.parquet"):
                if old != copy:
                    old.unlink(missing_ok=True)
        except OSError as e:
            log.warning("manifest copy %s not kept: %s", copy, e)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


def usable(table: pa.Table) -> pa.Table:
    """The rows whose image can be trained on (status ok or normalized)."""
    return table.filter(pc.is_in(table["status"], value_set=pa.array(list(USABLE))))


def empty() -> pa.Table:
    return SCHEMA.empty_table()


def unusable_rows(table: pa.Table | None) -> dict[str, dict]:
    """The rows whose image cannot be trained on (missing or invalid), by path, without the run that made them."""
    if table is None:
        return {}
    found = table.filter(pc.invert(pc.is_in(table["status"], value_set=pa.array(list(USABLE)))))
    return {r["path"]: {k: v for k, v in r.items() if k != "run_id"} for r in found.to_pylist()}


def same_outcome(row: dict, earlier: dict | None) -> bool:
    """The row says what `earlier` (from `unusable_rows`) said: every column but the run that made it."""
    return earlier is not None and all(row.get(k) == v for k, v in earlier.items())


def merge(tables: list[pa.Table]) -> pa.Table:
    """Concatenate parts and sort by path; when a path appears twice the later part wins.

    One sort of (path, position) and one take of the whole table: no hash table of every path and no second copy
    of the rows (at 1.3M rows the peak is about the input plus one output). Memory the pool keeps afterwards is
    handed back to the system, since finalize goes on to read the previous manifest."""
    tables = [t for t in tables if t is not None and t.num_rows]
    if not tables:
        return empty()
    table = pa.concat_tables(tables)
    keys = pa.table({"path": table["path"], "at": pa.array(range(table.num_rows), pa.int64())})
    order = pc.sort_indices(keys, sort_keys=[("path", "ascending"), ("at", "descending")])
    del keys
    paths = pc.take(table["path"], order).combine_chunks()
    # the first row of each run of equal paths is the latest one
    first = pc.not_equal(paths[1:], paths[:-1]) if len(paths) > 1 else pa.array([], pa.bool_())
    keep = pa.concat_arrays([pa.array([True]), first])
    del paths, first
    merged = table.take(order.filter(keep))
    del table, order, keep
    pa.default_memory_pool().release_unused()
    return merged


DIFF_LISTED = 10  # paths listed per kind of change in a run's report


@dataclass(frozen=True)
class Diff:
    added: int
    removed: int
    changed: int
    examples: dict[str, list[str]]  # the first DIFF_LISTED added / removed / changed paths, sorted

    def as_dict(self) -> dict:
        return {"added": self.added, "removed": self.removed, "changed": self.changed}

    @classmethod
    def none(cls) -> Diff:
        """What `diff` says of a manifest and itself."""
        return cls(0, 0, 0, {"added": [], "removed": [], "changed": []})


def _first_sorted(paths: pa.Array | pa.ChunkedArray) -> list[str]:
    return pc.take(paths, pc.sort_indices(paths)[:DIFF_LISTED]).to_pylist() if len(paths) else []


def _column(table: pa.Table | None, name: str) -> pa.Array:
    column = (table if table is not None else empty())[name]
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()  # one chunk: no copy


def not_in(paths: pa.Array, others: pa.Array) -> pa.Array:
    """The `paths` that `others` does not hold (Arrow's hash lookup: no Python object per row)."""
    if not len(paths):
        return paths
    return paths.filter(pc.invert(pc.is_in(paths, value_set=others)))


def diff(old: pa.Table | None, new: pa.Table) -> Diff:
    """What changed between two manifests of a source, by path and sha256.

    Arrow hash lookups, no per-row Python objects: each new path's index in the old manifest (`index_in`) gives
    both the added paths (no index) and the changed ones (the sha256 at that index differs)."""
    old_paths, new_paths = _column(old, "path"), _column(new, "path")
    at = pc.index_in(new_paths, value_set=old_paths)
    is_added = pc.is_null(at)
    was = pc.take(_column(old, "sha256"), at)
    now = _column(new, "sha256")
    same = pc.or_kleene(pc.fill_null(pc.equal(now, was), False), pc.and_(pc.is_null(now), pc.is_null(was)))
    added = new_paths.filter(is_added)
    changed = new_paths.filter(pc.and_(pc.invert(is_added), pc.invert(same)))
    removed = not_in(old_paths, new_paths)
    examples = {
        "added": _first_sorted(added),
        "removed": _first_sorted(removed),
        "changed": _first_sorted(changed),
    }
    result = Diff(added=len(added), removed=len(removed), changed=len(changed), examples=examples)
    del at, is_added, was, now, same, added, changed, removed
    pa.default_memory_pool().release_unused()
    return result


def stale_objects(source: str, old: pa.Table | None, new: pa.Table) -> list[str]:
    """Store keys that `old` put there and `new` no longer names: `data/<path>` of a path that is no longer
    usable (gone, or now invalid), `quarantine/<source>/<path>` of one that is no longer invalid."""
    if old is None or not old.num_rows:
        return []

    def paths(table: pa.Table, statuses: list[str]) -> pa.Array:
        table = table.select(["path", "status"])
        return _column(table.filter(pc.is_in(table["status"], value_set=pa.array(statuses))), "path")

    keys: list[str] = []
    for prefix, statuses in (("data/", list(USABLE)), (f"quarantine/{source}/", ["invalid"])):
        keys += [prefix + p for p in not_in(paths(old, statuses), paths(new, statuses)).to_pylist()]
    return sorted(keys)


def counts(table: pa.Table) -> dict[str, int]:
    """Rows per status, every status present (zeros included)."""
    out = dict.fromkeys(STATUSES, 0)
    if table.num_rows:
        for row in table.group_by("status").aggregate([("path", "count")]).to_pylist():
            out[row["status"]] = row["path_count"]
    return out
