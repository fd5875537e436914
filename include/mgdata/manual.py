"""Registration-only sources (DocVQA): the user provides the archive, in one of two ways, and the run takes it from there.

1. **Inbox**: put the archive in the store under `inbox/<source>/<file name>` (e.g. `inbox/docvqa/train.tar.gz`, with
   `aws s3 cp` or a plain copy into a local store).
2. **Authenticated URL**: an Airflow connection `mgdata_<source>` (e.g. `mgdata_docvqa`) whose host is the full URL
   of the archive (or the URI form `https://login:password@host/path`); its login and password are sent as HTTP
   Basic auth, and `{"headers": {...}}` in its extra is sent too (e.g. a session Cookie from the portal). Neither the
   password nor the headers appear in logs, reports or errors; URLs are logged without userinfo or query string.

The inbox wins when both are there. With neither, the plan raises `SourceSkipped` whose message is the catalog's
`manual_instructions`, verbatim, so the task log and the report tell the user exactly what to do; the source ends
skipped, not failed, and the next run picks the archive up.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from mgdata.catalog import RemoteFile, Source
from mgdata.fetch.http import fetch_to_store
from mgdata.fetch.transfer import (
    Digester,
    FetchResult,
    GiveUp,
    new_session,
    normalise_checksums,
    verify_body,
)
from mgdata.redact import redact_url
from mgdata.storage import MiB, Store

log = logging.getLogger("mgdata.manual")


def inbox_key(source: str, file: str) -> str:
    return f"inbox/{source}/{file}"


def connection_id(source: str) -> str:
    return f"mgdata_{source}"


@dataclass(frozen=True)
class Provided:
    """Where the user's copy of a file is: an inbox object or an authenticated URL (from a connection)."""

    where: str  # for records and logs: an inbox key, or "connection mgdata_docvqa: <URL without userinfo>"
    key: str | None = None  # inbox object
    etag: str | None = None  # the inbox object's validator (a new upload changes it)
    url: str | None = None  # authenticated URL (never logged as is)
    auth: tuple[str, str] | None = None
    headers: dict | None = None


def _from_connection(source: str) -> Provided | None:
    try:
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowNotFoundException
    except ImportError:  # the library without Airflow: only the inbox
        return None
    conn_id = connection_id(source)
    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None
    host = (conn.host or "").strip()
    if not host:
        return None
    if "://" not in host:  # URI form: scheme from the connection type, path from the schema
        scheme = conn.conn_type if conn.conn_type in ("http", "https") else "https"
        port = f":{conn.port}" if conn.port else ""
        host = f"{scheme}://{host}{port}/{(conn.schema or '').lstrip('/')}"
    auth = (conn.login, conn.password or "") if conn.login else None
    headers = conn.extra_dejson.get("headers") if conn.extra else None
    return Provided(where=f"connection {conn_id}: {redact_url(host)}", url=host, auth=auth, headers=headers)


def find_provided(store: Store, source: str, src: Source, f: RemoteFile) -> Provided:
    """The user's copy of `f`, or `SourceSkipped` with the catalog's instructions."""
    from mgdata.run import SourceSkipped

    info = store.stat(inbox_key(source, f.name))
    if info is not None:
        return Provided(where=inbox_key(source, f.name), key=info.key, etag=info.etag)
    provided = _from_connection(source)
    if provided is not None:
        return provided
    found = [o.key for o in store.list(f"inbox/{source}/")]
    seen = f"inbox/{source}/ holds {found}" if found else f"nothing under inbox/{source}/"
    raise SourceSkipped(
        f"{src.manual_instructions or f'Provide {f.name} for source {source!r}.'} "
        f"(Looked for {inbox_key(source, f.name)} in {store.url}: {seen}; no Airflow connection "
        f"{connection_id(source)}.)"
    )


def fetch_provided(
    store: Store, provided: Provided, key: str, *, label: str, size: int | None, checksums: dict
) -> FetchResult:
    """Copy the inbox object, or download the authenticated URL, into `key`, verified like any fetch."""
    if provided.url is not None:
        with new_session(pool=2) as session:
            session.auth = provided.auth
            session.headers.update(provided.headers or {})
            return fetch_to_store(
                [provided.url], store, key, label=label, size=size, checksums=checksums, session=session
            )
    return _copy(store, provided, key, label=label, size=size, checksums=checksums)


def _copy(
    store: Store, provided: Provided, key: str, *, label: str, size: int | None, checksums: dict
) -> FetchResult:
    from mgdata.fetch import FetchError

    started = time.monotonic()
    expected = normalise_checksums(checksums)
    digester = Digester(sorted({"sha256", *expected}))
    written = 0
    try:
        with store.open_range(provided.key) as src, store.writer(key) as out:
            while chunk := src.read(4 * MiB):
                out.write(chunk)
                digester.update(chunk)
                written += len(chunk)
            digests = digester.hexdigests()
            try:
                verify_body(written, digests, size=size, expected=expected)
            except (
                GiveUp
            ) as e:  # raising inside the writer's block aborts it: nothing is published under `key`
                raise FetchError(f"{label}: {provided.where}: {e.reason}") from None
    finally:
        digester.close()  # its threads end even when the read or the write failed
    log.info("%s: copied %d bytes from %s", label, written, provided.where)
    return FetchResult(
        url=provided.where, key=key, size=written, sha256=digests["sha256"], etag=provided.etag,
        last_modified=None, digests=digests, seconds=time.monotonic() - started, resumes=0, attempts=1,
    )  # fmt: skip
