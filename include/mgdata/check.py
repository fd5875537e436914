"""The store's invariant, checked: what every stage keeps and a retry after a kill restores.

For each checked source (all of the catalog's, or those named):

* every usable row (`ok`, `normalized`) of `manifests/<source>.parquet` has its object `data/<path>`, of that size
  and sha256 (`hashes=False`: size only);
* no object under the source's layout prefixes in `data/` lacks a usable row, and no object under
  `quarantine/<source>/` lacks an `invalid` row (no orphans); checking every source, no object of `data/` lies
  outside every source's prefixes;
* no path twice in a manifest, and every path one the store accepts (`data/<path>` is a valid key);
* nothing half-done: no temp file in a local store's `.tmp/`, no unfinished S3 multipart upload, no finalize
  journal (`work/journal/<source>/finalize.json`: a cut-off finalize that no retry has finished yet);
* the counts in `state/<source>.json`, and in the newest run report where the source is `ok`, equal the manifest's;
* with a layout (`MGDATA_LAYOUT_DIR`): the tree under the source's prefixes holds exactly its usable paths with
  their sizes (less the paths that report lists as skipped), and no temp file.

`python -m mgdata check [--source S]` runs it on the configured store and exits non-zero listing each problem; the
reliability tests run the same function after every injected failure and retry.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc

from mgdata import manifest
from mgdata.catalog import Catalog
from mgdata.layout import is_temp
from mgdata.run import finalize_journal_key, read_json, source_state_key
from mgdata.storage import LocalStore, S3Store, Store, StoreError, check_key

LISTED = 20  # problems of one kind listed per source; the rest are counted


@dataclass
class Findings:
    problems: list[str] = field(default_factory=list)
    sources: dict[str, dict] = field(default_factory=dict)  # per source: rows, usable, objects, checked

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, what: str, items: list[str]) -> None:
        """One problem per item, the first LISTED of them, then a count of the rest."""
        self.problems += [f"{what}: {i}" for i in items[:LISTED]]
        if len(items) > LISTED:
            self.problems.append(f"{what}: ... and {len(items) - LISTED} more")


def _sha256(store: Store, key: str) -> str:
    h = hashlib.sha256()
    with store.open_range(key) as body:
        while chunk := body.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def _objects(store: Store, prefix: str) -> dict[str, int]:
    """`{path below prefix: size}` of every object under `prefix`."""
    return {o.key[len(prefix) :]: o.size for o in store.list(prefix)}


def _temp_files(store: Store) -> list[str]:
    if isinstance(store, LocalStore):
        tmp = store.root / LocalStore.TMP_DIR
        return sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else []
    if isinstance(store, S3Store):
        prefix = f"{store.prefix}/" if store.prefix else ""
        found = []
        for page in store.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=store.bucket, Prefix=prefix
        ):
            found += [f"unfinished upload of {u['Key']}" for u in page.get("Uploads", [])]
        return found
    return []


def _layout_files(root: Path, prefix: str) -> dict[str, int]:
    found = {}
    top = root / prefix
    for dirpath, _, names in os.walk(top):
        for name in names:
            p = Path(dirpath) / name
            found[p.relative_to(root).as_posix()] = p.lstat().st_size
    return found


def check_source(
    store: Store,
    catalog: Catalog,
    source: str,
    findings: Findings,
    *,
    layout_dir: str | os.PathLike | None = None,
    hashes: bool = True,
) -> set[str]:
    """Check one source into `findings`; returns the data/ paths it accounts for."""
    prefixes = catalog.sources[source].layout
    table = manifest.read_table(store, manifest.source_key(source))
    if table is None:
        table = manifest.empty()
    found = {f"{prefix}/{p}": s for prefix in prefixes for p, s in _objects(store, f"data/{prefix}/").items()}

    dup = table.group_by("path").aggregate([("path", "count")])
    findings.add(
        f"{source}: path listed more than once in the manifest",
        sorted(dup.filter(pc.greater(dup["path_count"], 1))["path"].to_pylist()),
    )
    bad_keys = []
    for path in table["path"].to_pylist():
        try:
            check_key(f"data/{path}")
        except StoreError:
            bad_keys.append(repr(path))
    findings.add(f"{source}: path the store refuses", bad_keys)

    usable = manifest.usable(table)
    rows = dict(
        zip(
            usable["path"].to_pylist(),
            zip(usable["bytes"].to_pylist(), usable["sha256"].to_pylist(), strict=True),
            strict=True,
        )
    )
    findings.add(f"{source}: usable row without its object in data/", sorted(set(rows) - set(found)))
    findings.add(f"{source}: object in data/ without a usable row (orphan)", sorted(set(found) - set(rows)))
    findings.add(
        f"{source}: object size differs from its row",
        sorted(
            f"{p} ({found[p]} bytes, row says {rows[p][0]})"
            for p in set(rows) & set(found)
            if found[p] != rows[p][0]
        ),
    )
    if hashes:
        same_size = sorted(p for p in set(rows) & set(found) if found[p] == rows[p][0])
        with ThreadPoolExecutor(8) as pool:
            digests = pool.map(lambda p: _sha256(store, f"data/{p}"), same_size)
            findings.add(
                f"{source}: object sha256 differs from its row",
                [p for p, h in zip(same_size, digests, strict=True) if h != rows[p][1]],
            )

    invalid = table.filter(pc.equal(table["status"], "invalid"))["path"].to_pylist()
    quarantined = _objects(store, f"quarantine/{source}/")
    findings.add(
        f"{source}: object in quarantine/ without an invalid row (orphan)",
        sorted(set(quarantined) - set(invalid)),
    )

    journal = read_json(store, finalize_journal_key(source))
    if journal is not None and not journal.get("done"):
        findings.problems.append(
            f"{source}: the finalize of run {journal.get('run_id')} was cut off and not finished "
            f"({store.describe(finalize_journal_key(source))}): run the source's finalize again"
        )

    counts = manifest.counts(table)
    state = read_json(store, source_state_key(source))
    report = None
    if state is not None:
        if state.get("counts") != counts:
            findings.problems.append(
                f"{source}: state counts {state.get('counts')} differ from the manifest's {counts}"
            )
        # The report of the run whose finalize made the manifest: its counts must be the manifest's.
        report = read_json(store, f"runs/{state['run_id']}/report.json")
        said = ((report or {}).get("sources") or {}).get(source)
        if said is None:
            findings.problems.append(
                f"{source}: no report of run {state['run_id']} covers the manifest it made (did assemble finish?)"
            )
        elif (reported := {s: said.get(f"images_{s}") or 0 for s in manifest.STATUSES}) != counts:
            findings.problems.append(
                f"{source}: report of run {state['run_id']} counts {reported}, the manifest {counts}"
            )
    elif table.num_rows:
        findings.problems.append(
            f"{source}: a manifest without {source_state_key(source)} (finalize did not finish)"
        )

    if layout_dir is not None:
        root = Path(layout_dir)
        skipped = {s["path"] for s in ((report or {}).get("layout") or {}).get("skipped_paths") or []}
        tree = {p: s for prefix in prefixes for p, s in _layout_files(root, prefix).items()}
        temps = sorted(p for p in tree if is_temp(p.rsplit("/", 1)[-1]))
        findings.add(f"{source}: temp file left in the layout {root}", temps)
        tree = {p: s for p, s in tree.items() if p not in temps}
        want = {p: b for p, (b, _) in rows.items() if p not in skipped}
        findings.add(f"{source}: usable image missing from the layout {root}", sorted(set(want) - set(tree)))
        findings.add(
            f"{source}: file in the layout {root} without a usable row", sorted(set(tree) - set(want))
        )
        findings.add(
            f"{source}: layout file size differs from its row",
            sorted(p for p in set(want) & set(tree) if tree[p] != want[p]),
        )
    findings.sources[source] = {
        "rows": table.num_rows,
        "usable": len(rows),
        "objects": len(found),
        "quarantined": len(quarantined),
        **counts,
    }
    return set(found)


def check_store(
    store: Store,
    catalog: Catalog,
    *,
    sources: list[str] | None = None,
    layout_dir: str | os.PathLike | None = None,
    hashes: bool = True,
) -> Findings:
    """The invariant over `sources` (default: every source of the catalog). `findings.ok` when it holds."""
    findings = Findings()
    unknown = sorted(set(sources or []) - set(catalog.sources))
    if unknown:
        findings.problems.append(f"no such source in the catalog: {', '.join(unknown)}")
    accounted: set[str] = set()
    for name in sources or list(catalog.sources):
        if name in catalog.sources:
            accounted |= check_source(store, catalog, name, findings, layout_dir=layout_dir, hashes=hashes)
    if not sources:
        stray = sorted(set(_objects(store, "data/")) - accounted)
        findings.add("object in data/ outside every source's layout prefixes", stray)
    findings.add("temp file or unfinished upload in the store", _temp_files(store))
    return findings
