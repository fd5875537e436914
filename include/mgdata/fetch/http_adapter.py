"""The http adapter: a catalog mirror with a `url`, fetched by `mgdata.fetch.http`."""

from __future__ import annotations

from mgdata.catalog import Mirror
from mgdata.fetch.http import fetch_to_store
from mgdata.fetch.http import probe as probe_url
from mgdata.fetch.transfer import FetchResult, RemoteInfo
from mgdata.storage import Store


def fetch(
    mirror: Mirror, store: Store, key: str, *, label: str, size: int | None, checksums: dict
) -> FetchResult:
    return fetch_to_store([mirror.url], store, key, label=label, size=size, checksums=checksums)


def probe(mirror: Mirror) -> RemoteInfo:
    return probe_url(mirror.url)
