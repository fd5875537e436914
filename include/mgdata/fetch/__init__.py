"""Fetch adapters: one module per kind of mirror (http, huggingface, gdrive), one entry point for the pipeline.

`fetch_mirrors` tries a file's mirrors in catalog order, each through the adapter of its kind, and returns the first
verified result. Every adapter has the same shape:

    fetch(mirror, store, key, *, label, size, checksums) -> FetchResult    # publish `key` only when verified
    probe(mirror) -> RemoteInfo                                           # what the remote holds now (for refreshes)

and raises `FetchError` (whose `failures` lists `(where, reason)`) when it cannot deliver. A kind without an adapter
is skipped with that reason, so a source can list a mirror kind that is still being built.
"""

from __future__ import annotations

import importlib
import logging

from mgdata.catalog import Mirror
from mgdata.fetch.transfer import FetchError, FetchResult, RemoteInfo, fetch_error
from mgdata.redact import redact_text
from mgdata.storage import Store


class _RedactRequestLines(logging.Filter):
    """urllib3 logs every request line with its query string at DEBUG: a signed URL's token must not reach a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact_text(record.getMessage()), ()
        return True


logging.getLogger("urllib3.connectionpool").addFilter(_RedactRequestLines())

# mirror kind -> module implementing fetch() and probe()
ADAPTERS = {
    "http": "mgdata.fetch.http_adapter",
    "gdrive": "mgdata.fetch.gdrive",
    "huggingface": "mgdata.fetch.huggingface",
}


def adapter(kind: str):
    module = ADAPTERS.get(kind)
    return importlib.import_module(module) if module else None


def fetch_mirrors(
    mirrors: list[Mirror],
    store: Store,
    key: str,
    *,
    label: str,
    size: int | None = None,
    checksums: dict[str, str] | None = None,
) -> tuple[FetchResult, Mirror]:
    """The first verified result, with the mirror that delivered it."""
    failures: list[tuple[str, str]] = []
    for m in mirrors:
        impl = adapter(m.kind)
        if impl is None:
            failures.append((m.describe(), f"no {m.kind} adapter yet"))
            continue
        # A mirror may repackage the file: its own size/sha256 then replace the primary's.
        expected = {"sha256": m.sha256} if m.sha256 else dict(checksums or {})
        try:
            return impl.fetch(m, store, key, label=label, size=m.size or size, checksums=expected), m
        except FetchError as e:
            failures += list(e.failures) or [(m.describe(), str(e))]
    raise fetch_error(FetchError, label, failures)


def probe_mirror(mirror: Mirror) -> RemoteInfo:
    impl = adapter(mirror.kind)
    if impl is None:
        raise fetch_error(FetchError, None, [(mirror.describe(), f"no {mirror.kind} adapter yet")])
    return impl.probe(mirror)


__all__ = ["ADAPTERS", "FetchError", "FetchResult", "RemoteInfo", "adapter", "fetch_mirrors", "probe_mirror"]
