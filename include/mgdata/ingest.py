"""The per-source stages a run goes through: plan → fetch (per file) → shard → extract (per shard) → finalize.

Each stage is one plain function that a thin Airflow task calls with plain arguments; it reads what it needs from the
catalog and the store and returns a small dict (file names, shard ids, counts). Everything larger lives in the store:

    state/<source>.json                   the source after its last successful ingest (files, counts, run id)
    state/<source>/files/<file>.json      per remote file: what was fetched (etag, size, digests) and extracted
    runs/<run_id>/sources/<source>/...    this run's plan, fetch records, failures and the source summary
    work/<run_id>/<source>/<file>/<n>.json  the members of one extract shard
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property

from mgdata import manifest
from mgdata.catalog import Catalog, RemoteFile, Source
from mgdata.settings import Settings
from mgdata.storage import Store

log = logging.getLogger("mgdata.ingest")

# Source kinds that can be ingested; the others are declared in the catalog and skipped with this reason.
READY_KINDS = {"http"}
PENDING_ADAPTER = {
    "huggingface": "the Hugging Face adapter is not built yet (issue #3)",
    "gdrive": "the Google Drive adapter is not built yet (issue #4)",
    "urllist": "the URL-list adapter is not built yet (issue #4)",
    "manual": "registration-only sources are not supported yet (issue #4)",
}


class SourceSkipped(Exception):
    """The source is not ingested in this run; the message says why (shown in the UI and the report)."""


class SourceFailed(RuntimeError):
    """A source-level failure whose message already names the source and the file."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _json(store: Store, key: str) -> dict | None:
    if store.stat(key) is None:
        return None
    return json.loads(store.read_bytes(key))


def _put_json(store: Store, key: str, value) -> None:
    store.put_bytes(key, json.dumps(value, indent=1, sort_keys=True, default=str).encode())


def _fingerprint(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fetch_fingerprint(f: RemoteFile) -> str:
    """Changes when what we fetch changes: mirrors, size or checksums."""
    return _fingerprint([m.model_dump() for m in f.mirrors] + [f.size, f.checksums])


def extract_fingerprint(f: RemoteFile) -> str:
    """Changes when where members land changes: the mapping rules."""
    return _fingerprint([f.archive, f.target, f.member_prefix, f.strip_components, f.flatten, f.include])


def raw_key(source: str, file: str) -> str:
    return f"raw/{source}/{file}"


def file_state_key(source: str, file: str) -> str:
    return f"state/{source}/files/{file}.json"


def source_state_key(source: str) -> str:
    return f"state/{source}.json"


@dataclass
class Run:
    """What every stage of one DAG run shares: settings, run id, the force flag; catalog and store load lazily."""

    settings: Settings
    run_id: str
    force: bool = False
    _store: Store | None = field(default=None, repr=False)

    @cached_property
    def catalog(self) -> Catalog:
        return self.settings.load_catalog()

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = self.settings.open_store()
        return self._store

    def source(self, name: str) -> Source:
        return self.catalog.sources[name]

    def file(self, source: str, name: str) -> RemoteFile:
        for f in self.source(source).files:
            if f.name == name:
                return f
        raise SourceFailed(f"source {source!r}: the catalog declares no file {name!r}")

    def key(self, source: str, *parts: str) -> str:
        return "/".join(["runs", self.run_id, "sources", source, *parts])

    def work_key(self, source: str, *parts: str) -> str:
        return "/".join(["work", self.run_id, source, *parts])


# ----------------------------------------------------------------------------------------------------------- plan


def plan_source(run: Run, source: str) -> list[dict]:
    """Decide, per remote file, whether to fetch and whether to extract; return the files to fetch.

    A file is fetched again only when it is new, its catalog entry changed, its stored copy is missing, `force` is set,
    or (for files without a pinned checksum) the server's ETag / Last-Modified / size moved. Nothing changed means
    nothing fetched.
    """
    src = run.source(source)
    if src.kind not in READY_KINDS:
        raise SourceSkipped(PENDING_ADAPTER.get(src.kind, f"no adapter for source kind {src.kind!r}"))
    store = run.store
    decisions = []
    for f in src.files:
        rec = _json(store, file_state_key(source, f.name)) or {}
        fetch, reason = _needs_fetch(run, source, f, rec)
        extract = fetch or _needs_extract(run, f, rec)
        decisions.append({"file": f.name, "fetch": fetch, "extract": extract, "reason": reason})
        log.info(
            "%s/%s: %s%s", source, f.name, "fetch" if fetch else "keep", f" ({reason})" if reason else ""
        )
    _put_json(store, run.key(source, "plan.json"), {"source": source, "started": now(), "files": decisions})
    return [{"file": d["file"]} for d in decisions if d["fetch"]]


def _needs_fetch(run: Run, source: str, f: RemoteFile, rec: dict) -> tuple[bool, str]:
    fetched = rec.get("fetch")
    if run.force:
        return True, "forced"
    if not fetched:
        return True, "new"
    if fetched.get("fingerprint") != fetch_fingerprint(f):
        return True, "catalog entry changed"
    raw = run.store.stat(raw_key(source, f.name))
    if raw is None or raw.size != fetched.get("size"):
        return True, "stored copy missing or incomplete"
    if "sha256" in f.checksums or "md5" in f.checksums or "sha1" in f.checksums:
        return False, "unchanged (pinned checksum verified)"
    return _remote_moved(f, fetched)


def _remote_moved(f: RemoteFile, fetched: dict) -> tuple[bool, str]:
    from mgdata.fetch import FetchError, probe_mirror

    mirror = next((m for m in f.mirrors if m.describe() == fetched.get("mirror")), f.mirrors[0])
    try:
        info = probe_mirror(mirror)
    except FetchError as e:
        # A scheduled refresh must not destroy a verified copy because the upstream is down for a day.
        return False, f"kept: upstream unreachable ({e})"
    if info.etag and fetched.get("etag"):
        moved = info.etag != fetched["etag"]
    else:
        moved = (info.last_modified, info.size) != (fetched.get("last_modified"), fetched.get("size"))
    return (True, "upstream changed") if moved else (False, "unchanged (ETag/Last-Modified/size)")


def _needs_extract(run: Run, f: RemoteFile, rec: dict) -> bool:
    done = rec.get("extract")
    return (
        run.force
        or not done
        or done.get("sha256") != (rec.get("fetch") or {}).get("sha256")
        or done.get("fingerprint") != extract_fingerprint(f)
    )


# ----------------------------------------------------------------------------------------------------------- fetch


def fetch_file(run: Run, source: str, file: str) -> dict:
    """Stream one remote file into `raw/<source>/<file>`, verified, trying mirrors in catalog order."""
    from mgdata.fetch import fetch_mirrors

    f = run.file(source, file)
    label = f"{source}/{file}"
    result, mirror = fetch_mirrors(
        f.mirrors, run.store, raw_key(source, file), label=label, size=f.size, checksums=dict(f.checksums)
    )
    record = {
        "mirror": mirror.describe(),
        "url": result.url,
        "size": result.size,
        "sha256": result.sha256,
        "digests": result.digests,
        "etag": result.etag,
        "last_modified": result.last_modified,
        "fingerprint": fetch_fingerprint(f),
        "run_id": run.run_id,
        "seconds": round(result.seconds, 3),
        "resumes": result.resumes,
    }
    rec = _json(run.store, file_state_key(source, file)) or {}
    rec["fetch"] = record
    _put_json(run.store, file_state_key(source, file), rec)
    _put_json(run.store, run.key(source, "fetched", f"{file}.json"), record)
    return {"file": file, "bytes": result.size, "seconds": round(result.seconds, 3)}


# ----------------------------------------------------------------------------------------------------------- shard


def plan_shards(run: Run, source: str) -> list[str]:
    """Cut every file this run extracts into shards; return shard ids `<file>/<n>` (one mapped extract each)."""
    from mgdata.extract import shard_file

    plan = _json(run.store, run.key(source, "plan.json"))
    if plan is None:
        raise SourceFailed(f"source {source!r}: no plan for run {run.run_id} (did the plan task run?)")
    ids: list[str] = []
    for d in plan["files"]:
        if d["extract"]:
            ids += shard_file(run, source, run.file(source, d["file"]))
    return ids


def extract_shard(run: Run, source: str, shard_id: str) -> dict:
    from mgdata.extract import extract

    return extract(run, source, shard_id)


# ----------------------------------------------------------------------------------------------------------- finalize


def finalize_source(run: Run, source: str) -> dict:
    """Merge the shard manifests, diff against the last ingest, record state and this run's source summary."""
    store, src = run.store, run.source(source)
    plan = _json(store, run.key(source, "plan.json")) or {"files": []}
    extracted = [d["file"] for d in plan["files"] if d["extract"]]
    old = manifest.read_table(store, manifest.source_key(source))
    if extracted or old is None:
        parts = [o.key for f in src.files for o in store.list(manifest.parts_prefix(source, f.name))]
        new = manifest.merge([manifest.read_table(store, k) for k in parts])
        manifest.write_table(store, manifest.source_key(source), new)
    else:
        new = old
    change = manifest.diff(old, new)
    _remove_stale(store, source, old, change.removed_paths)

    for name in extracted:
        rec = _json(store, file_state_key(source, name)) or {}
        rec["extract"] = {
            "sha256": (rec.get("fetch") or {}).get("sha256"),
            "fingerprint": extract_fingerprint(run.file(source, name)),
            "run_id": run.run_id,
        }
        _put_json(store, file_state_key(source, name), rec)

    fetched = [_json(store, o.key) for o in store.list(run.key(source, "fetched") + "/")]
    counts = manifest.counts(new)
    usable = counts["ok"] + counts["normalized"]
    summary = {
        "source": source,
        "title": src.title,
        "kind": src.kind,
        "status": "ok",
        "files_fetched": len(fetched),
        "bytes_fetched": sum(r["size"] for r in fetched),
        "fetch_seconds": round(sum(r["seconds"] for r in fetched), 3),
        "files_extracted": len(extracted),
        "images_ok": counts["ok"],
        "images_invalid": counts["invalid"],
        "images_normalized": counts["normalized"],
        "images_missing": counts["missing"],
        "expected_images": src.expected_images,
        "count_check": _count_check(usable, src.expected_images),
        "diff": change.as_dict(),
        "plan": plan["files"],
        "started": plan.get("started"),
        "finished": now(),
        "error": None,
        "run_id": run.run_id,
    }
    _put_json(store, run.key(source, "summary.json"), summary)
    _put_json(
        store,
        source_state_key(source),
        {
            "source": source,
            "run_id": run.run_id,
            "updated": summary["finished"],
            "counts": counts,
            "files": {f.name: _json(store, file_state_key(source, f.name)) for f in src.files},
        },
    )
    return {
        k: summary[k]
        for k in (
            "status",
            "files_fetched",
            "bytes_fetched",
            "images_ok",
            "images_invalid",
            "images_normalized",
            "expected_images",
        )
    } | change.as_dict()


def _count_check(usable: int, expected: int | None) -> str:
    if expected is None:
        return "no expectation in the catalog"
    if usable == expected:
        return f"as expected ({expected})"
    return f"{usable} usable images, catalog expects {expected} ({usable - expected:+d})"


def _remove_stale(store: Store, source: str, old, removed_paths: list[str]) -> None:
    """Objects for paths that left the manifest (a file upstream shrank) are removed from data/ and quarantine/."""
    if not removed_paths or old is None:
        return
    for path in removed_paths:
        store.delete(f"data/{path}")
        store.delete(f"quarantine/{source}/{path}")


# ----------------------------------------------------------------------------------------------------------- outcome records


def no_ingest_summary(run: Run, source: str, status: str, reason: str) -> dict:
    """The summary of a source that ingested nothing in this run (skipped, or failed before finalize)."""
    src = run.source(source)
    return {
        "source": source,
        "title": src.title,
        "kind": src.kind,
        "status": status,
        "error": reason,
        "files_fetched": 0,
        "bytes_fetched": 0,
        "images_ok": 0,
        "images_invalid": 0,
        "images_normalized": 0,
        "expected_images": src.expected_images,
        "run_id": run.run_id,
        "finished": now(),
    }


def record_skipped(run: Run, source: str, reason: str) -> None:
    _put_json(run.store, run.key(source, "summary.json"), no_ingest_summary(run, source, "skipped", reason))


def record_failure(run: Run, source: str, task: str, error: BaseException) -> None:
    """Keep a failed attempt's reason in the store so the report can say why a source failed."""
    message = str(error) if isinstance(error, SourceFailed | ValueError | RuntimeError | OSError) else ""
    message = message or f"{type(error).__name__}: {error}"
    stamp = f"{time.time_ns()}"
    _put_json(
        run.store,
        run.key(source, "errors", f"{task}.{stamp}.json"),
        {
            "source": source,
            "task": task,
            "error": message,
            "at": now(),
        },
    )
