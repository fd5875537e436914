"""Manifests: one row per image, as Parquet in the store.

Each extract shard writes a small part (`manifests/parts/<source>/<file>/<shard>.parquet`); finalize merges a source's
parts into `manifests/<source>.parquet` (the latest state of that source), and the diff between the old and the new
merged manifest is what a run changed. Columns are a contract (DESIGN §4); keep them in step with the README.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mgdata.storage import Store

SCHEMA = pa.schema(
    [
        ("path", pa.string()),  # relative to data/
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("format", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("status", pa.string()),  # ok | normalized | invalid | missing
        ("error", pa.string()),
        ("origin", pa.string()),  # archive member (raw/<source>/<file>!<member>) or URL
        ("run_id", pa.string()),
    ]
)
STATUSES = ("ok", "normalized", "invalid", "missing")
USABLE = ("ok", "normalized")


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
    if store.stat(key) is None:
        return None
    with store.open_seekable(key) as f:
        return pq.read_table(f, schema=SCHEMA, columns=columns)


def usable(table: pa.Table) -> pa.Table:
    """The rows whose image can be trained on (status ok or normalized)."""
    return table.filter(pc.is_in(table["status"], value_set=pa.array(list(USABLE))))


def empty() -> pa.Table:
    return SCHEMA.empty_table()


def merge(tables: list[pa.Table]) -> pa.Table:
    """Concatenate parts and sort by path; when a path appears twice the later part wins."""
    tables = [t for t in tables if t is not None and t.num_rows]
    if not tables:
        return empty()
    table = pa.concat_tables(tables)
    # Keep the last occurrence of each path: index rows, then take the max index per path.
    table = table.append_column("_i", pa.array(range(table.num_rows), pa.int64()))
    last = table.group_by("path").aggregate([("_i", "max")])
    table = table.take(last["_i_max"]).drop_columns(["_i"])
    return table.sort_by("path")


DIFF_LISTED = 10  # paths listed per kind of change in a run's report


@dataclass(frozen=True)
class Diff:
    added: int
    removed: int
    changed: int
    examples: dict[str, list[str]]  # the first DIFF_LISTED added / removed / changed paths, sorted

    def as_dict(self) -> dict:
        return {"added": self.added, "removed": self.removed, "changed": self.changed}


def _keys(table: pa.Table | None, columns=("path", "sha256")) -> pa.Table:
    return (table if table is not None else empty()).select(list(columns))


def _first_sorted(paths: pa.Array | pa.ChunkedArray) -> list[str]:
    return pc.take(paths, pc.sort_indices(paths)[:DIFF_LISTED]).to_pylist() if len(paths) else []


def anti_join(left: pa.Table, right: pa.Table) -> pa.Array | pa.ChunkedArray:
    """The paths of `left` that `right` does not hold (Arrow's hash join: no Python object per row)."""
    if not left.num_rows:
        return pa.array([], pa.string())
    right = right.select(["path"]).combine_chunks() if right.num_rows else empty().select(["path"])
    return left.select(["path"]).join(right, "path", join_type="left anti")["path"]


def diff(old: pa.Table | None, new: pa.Table) -> Diff:
    """What changed between two manifests of a source, by path and sha256 (Arrow joins, no per-row dicts: 1.3M
    rows stay a few hundred MB)."""
    old, new = _keys(old), _keys(new)
    added, removed = anti_join(new, old), anti_join(old, new)
    both = new.join(old, "path", join_type="inner", right_suffix="_old")
    a, b = both["sha256"], both["sha256_old"]
    same = pc.or_kleene(pc.fill_null(pc.equal(a, b), False), pc.and_(pc.is_null(a), pc.is_null(b)))
    changed = both.filter(pc.invert(same))["path"]
    examples = {
        "added": _first_sorted(added),
        "removed": _first_sorted(removed),
        "changed": _first_sorted(changed),
    }
    return Diff(added=len(added), removed=len(removed), changed=len(changed), examples=examples)


def stale_objects(source: str, old: pa.Table | None, new: pa.Table) -> list[str]:
    """Store keys that `old` put there and `new` no longer names: `data/<path>` of a path that is no longer
    usable (gone, or now invalid), `quarantine/<source>/<path>` of one that is no longer invalid."""
    if old is None or not old.num_rows:
        return []
    old, new = _keys(old, ("path", "status")), _keys(new, ("path", "status"))
    invalid = pa.array(["invalid"])
    keys: list[str] = []
    for prefix, pick in (
        ("data/", usable),
        (f"quarantine/{source}/", lambda t: t.filter(pc.is_in(t["status"], invalid))),
    ):
        keys += [prefix + p for p in anti_join(pick(old), pick(new)).to_pylist()]
    return sorted(keys)


def counts(table: pa.Table) -> dict[str, int]:
    """Rows per status, every status present (zeros included)."""
    out = dict.fromkeys(STATUSES, 0)
    if table.num_rows:
        for row in table.group_by("status").aggregate([("path", "count")]).to_pylist():
            out[row["status"]] = row["path_count"]
    return out
