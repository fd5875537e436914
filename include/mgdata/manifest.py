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
    removed_paths: list[str]
    examples: dict[str, list[str]]  # the first DIFF_LISTED added / removed / changed paths, sorted

    def as_dict(self) -> dict:
        return {"added": self.added, "removed": self.removed, "changed": self.changed}


def diff(old: pa.Table | None, new: pa.Table) -> Diff:
    """What changed between two manifests of a source, by path and sha256."""
    old = old if old is not None else empty()
    old_map = dict(zip(old["path"].to_pylist(), old["sha256"].to_pylist(), strict=True))
    new_map = dict(zip(new["path"].to_pylist(), new["sha256"].to_pylist(), strict=True))
    removed = sorted(set(old_map) - set(new_map))
    added = sorted(set(new_map) - set(old_map))
    changed = sorted(p for p, h in new_map.items() if p in old_map and old_map[p] != h)
    examples = {
        "added": added[:DIFF_LISTED],
        "removed": removed[:DIFF_LISTED],
        "changed": changed[:DIFF_LISTED],
    }
    return Diff(
        added=len(added), removed=len(removed), changed=len(changed), removed_paths=removed, examples=examples
    )


def counts(table: pa.Table) -> dict[str, int]:
    """Rows per status, every status present (zeros included)."""
    out = dict.fromkeys(STATUSES, 0)
    if table.num_rows:
        for row in table.group_by("status").aggregate([("path", "count")]).to_pylist():
            out[row["status"]] = row["path_count"]
    return out
