"""The run context every stage shares, its errors, and the names of what a run keeps in the store.

`Run` carries the settings, the run id and the force flag (catalog and store load lazily); `SourceFailed` and
`SourceSkipped` are how a stage says a source failed or is not ingested in this run. The stages (`ingest`, `extract`,
`manual`) and the report import these from here; `ingest` orchestrates the stages and is imported by none of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property

from mgdata.catalog import Catalog, RemoteFile, Source
from mgdata.settings import Settings
from mgdata.storage import Store


class SourceSkipped(Exception):
    """The source is not ingested in this run; the message says why (shown in the UI and the report)."""


class SourceFailed(RuntimeError):
    """A source-level failure whose message already names the source and the file."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_json(store: Store, key: str) -> dict | None:
    data = store.read_if_exists(key)
    return None if data is None else json.loads(data)


def put_json(store: Store, key: str, value) -> None:
    store.put_bytes(key, json.dumps(value, indent=1, sort_keys=True, default=str).encode())


def raw_key(source: str, file: str) -> str:
    return f"raw/{source}/{file}"


def file_state_key(source: str, file: str) -> str:
    return f"state/{source}/files/{file}.json"


def source_state_key(source: str) -> str:
    return f"state/{source}.json"


def finalize_journal_key(source: str) -> str:
    return f"work/journal/{source}/finalize.json"


def finalize_old_key(source: str) -> str:
    return f"work/journal/{source}/old.parquet"


@dataclass
class Run:
    """What every stage of one DAG run shares: settings, run id, the force flag; catalog and store load lazily."""

    settings: Settings
    run_id: str
    force: bool = False
    _store: Store | None = field(default=None, repr=False)
    # this run's own records that this process wrote, so the same task reads them back without a request
    _written: dict[str, dict] = field(default_factory=dict, repr=False)

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

    def files(self, source: str) -> list[RemoteFile]:
        """The source's files in this run: the catalog's, each listed entry (`path_glob`) replaced by the files
        this run's plan found for it."""
        entries = self.source(source).files
        if not any(f.listed for f in entries):
            return list(entries)
        found = self.record(source, "listing.json") or {}
        out: list[RemoteFile] = []
        for f in entries:
            out += [RemoteFile.model_validate(d) for d in found.get(f.name, [])] if f.listed else [f]
        return out

    def file(self, source: str, name: str) -> RemoteFile:
        for f in self.files(source):
            if f.name == name:
                return f
        raise SourceFailed(f"source {source!r}: the catalog declares no file {name!r}")

    def key(self, source: str, *parts: str) -> str:
        return "/".join(["runs", self.run_id, "sources", source, *parts])

    def put_record(self, source: str, name: str, value: dict, *, persist: bool = True) -> None:
        """Write one of this run's records of a source (`runs/<run_id>/sources/<source>/<name>`); `persist=False`:
        keep it in this process only, for a record no other task reads."""
        if persist:
            put_json(self.store, self.key(source, name), value)
        self._written[self.key(source, name)] = value

    def record(self, source: str, name: str) -> dict | None:
        """One of this run's records of a source, None if not written. Only this run writes under its runs/
        folder, and a task rewrites a record only by running again, so what this process wrote is still current."""
        key = self.key(source, name)
        return self._written[key] if key in self._written else read_json(self.store, key)

    def work_key(self, source: str, *parts: str) -> str:
        return "/".join(["work", self.run_id, source, *parts])


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
