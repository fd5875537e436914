"""Stream a remote file over HTTP(S) into the store: resumable, retried, verified before it is published.

`fetch_to_store(urls, store, key, label=..., size=..., checksums=...)` tries the mirrors in order. From each one it
streams the body into `store.new_writer(key)` while hashing it (sha256 always, plus any algorithm the catalog gives a
checksum for), so a 20 GB archive never sits in memory or in a second temporary copy. A connection that drops mid-body
is resumed with `Range: bytes=<written>-` guarded by `If-Range`, into the same writer; a server that answers the range
with a full 200 (it ignores ranges, or the file changed) restarts the object from byte 0. Server errors, 429s,
timeouts and connection errors are retried with capped exponential backoff (honouring `Retry-After`); other 4xx
answers give up on that mirror at once. The object is committed only when the byte count and every given checksum
match; otherwise the writer is aborted and nothing appears under the key.

Messages name the file's label and the mirror URLs with any userinfo and query string removed (a URL may carry a
token); request and response headers are never logged.

This module picks the strategy per mirror: one stream (`mgdata.fetch.stream`) or, for a big file on a server that
honours ranges, parallel ranged GETs (`mgdata.fetch.parallel`). Both are built on `mgdata.fetch.transfer` (session,
retries, errors, digests, verification, progress); `probe` asks a server what it holds without downloading.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import requests

from mgdata.fetch.parallel import NotRanged, ParallelFetch
from mgdata.fetch.stream import StreamFetch
from mgdata.fetch.transfer import (
    CONNECT_TIMEOUT,
    FATAL_REQUEST_ERRORS,
    RETRY_REQUEST_ERRORS,
    Backoff,
    ChecksumMismatch,
    FetchError,
    FetchResult,
    GiveUp,
    Progress,
    RemoteInfo,
    describe_error,
    fetch_error,
    int_header,
    new_session,
    normalise_checksums,
    parse_content_range,
    retry_after_seconds,
    retryable_status,
)
from mgdata.redact import redact_url
from mgdata.settings import env_int
from mgdata.storage import MiB, Store, check_key

# Big files come over parallel ranged GETs (mgdata.fetch.parallel): servers often cap each connection's rate. The
# fetch starts with 8 connections and doubles them while the throughput grows, up to this many.
PARALLEL_CONNECTIONS = 32
PARALLEL_MIN = 64 * MiB
PARALLEL_PART_SIZE = 8 * MiB

logger = logging.getLogger("mgdata.fetch")


# --------------------------------------------------------------------------------------------------------------------
# probe


def probe(
    url: str,
    *,
    session: requests.Session | None = None,
    timeout: float = 30,
    max_attempts: int = 6,
    backoff: float = 1.0,
    max_backoff: float = 60,
    log: Callable[[str], None] | None = None,
    headers: dict[str, str] | None = None,
) -> RemoteInfo:
    """Size and validators of a remote file without downloading it. `headers` are sent with every request (e.g.
    an Authorization header) and never logged.

    HEAD (following redirects); a server that refuses HEAD (403/405/501) is asked for `Range: bytes=0-0` instead and
    the size read from Content-Range. Retries 5xx/408/429, timeouts and connection errors like `fetch_to_store`.
    """
    emit = log or logger.info
    own = session is None
    session = session or new_session(pool=2)
    waits = Backoff(backoff, max_backoff)
    safe = redact_url(url)
    failures, reason = 0, ""
    try:
        while True:
            retry_after = None
            try:
                return _probe_once(session, url, timeout, headers or {})
            except RETRY_REQUEST_ERRORS as e:
                reason = describe_error(e, timeout)
            except _RetryStatus as e:
                reason, retry_after = e.reason, e.retry_after
            except GiveUp as e:
                raise fetch_error(FetchError, None, [(safe, e.reason)]) from None
            except FATAL_REQUEST_ERRORS as e:
                raise fetch_error(FetchError, None, [(safe, describe_error(e))]) from None
            failures += 1
            if failures >= max_attempts:
                raise fetch_error(FetchError, None, [(safe, f"{reason} (gave up after {failures} attempts)")])
            delay = waits.delay(failures, retry_after)
            emit(f"{safe}: {reason}; retrying in {delay:.3g} s")
            time.sleep(delay)
    finally:
        if own:
            session.close()


class _RetryStatus(Exception):
    def __init__(self, resp: requests.Response):
        self.reason = f"HTTP {resp.status_code} {resp.reason}".strip()
        self.retry_after = retry_after_seconds(resp)


def _check(resp: requests.Response) -> None:
    if resp.status_code < 300:
        return
    if retryable_status(resp.status_code):
        raise _RetryStatus(resp)
    raise GiveUp(f"HTTP {resp.status_code} {resp.reason}".strip())


def _probe_once(session: requests.Session, url: str, timeout: float, extra: dict[str, str]) -> RemoteInfo:
    headers = {**extra, "Accept-Encoding": "identity"}
    with session.head(url, headers=headers, allow_redirects=True, timeout=(CONNECT_TIMEOUT, timeout)) as r:
        if r.status_code not in (403, 405, 501):
            _check(r)
            return RemoteInfo(
                url=redact_url(r.url),
                size=int_header(r, "Content-Length"),
                etag=r.headers.get("ETag"),
                last_modified=r.headers.get("Last-Modified"),
                accepts_ranges=r.headers.get("Accept-Ranges", "").strip().lower() == "bytes",
            )
    # HEAD refused: ask for the first byte; the body is never read past it.
    headers["Range"] = "bytes=0-0"
    with session.get(url, headers=headers, stream=True, timeout=(CONNECT_TIMEOUT, timeout)) as r:
        _check(r)
        cr = parse_content_range(r.headers.get("Content-Range")) if r.status_code == 206 else None
        return RemoteInfo(
            url=redact_url(r.url),
            size=cr[2]
            if cr is not None
            else (int_header(r, "Content-Length") if r.status_code == 200 else None),
            etag=r.headers.get("ETag"),
            last_modified=r.headers.get("Last-Modified"),
            accepts_ranges=r.status_code == 206,
        )


# --------------------------------------------------------------------------------------------------------------------
# fetch_to_store


def fetch_to_store(
    urls: list[str],
    store: Store,
    key: str,
    *,
    label: str,
    size: int | None = None,
    checksums: dict[str, str] | None = None,
    session: requests.Session | None = None,
    timeout: float = 60,
    max_attempts: int = 6,
    backoff: float = 1.0,
    max_backoff: float = 60,
    progress_every: float = 10.0,
    log: Callable[[str], None] | None = None,
    headers: dict[str, str] | None = None,
    connections: int | None = None,
    part_size: int | None = None,
    parallel_min: int | None = None,
) -> FetchResult:
    """Download the first mirror in `urls` that delivers a verified body into `store` under `key`.

    `size` and `checksums` ({"sha256": hex, "md5": hex, ...}) come from the catalog; the object is published only if
    they all match. `max_attempts` bounds consecutive failed attempts per mirror that make no new progress (a
    connection that keeps dropping but delivers more each time is resumed until done). `timeout` is the read timeout
    (seconds without a byte). Raises ChecksumMismatch when every mirror delivered a wrong body, FetchError otherwise;
    a StoreError from the store propagates at once. Nothing is ever left under `key` on failure. `headers` are sent
    with every request (e.g. an Authorization header; requests drops it on a redirect to another host) and never
    logged.

    A file whose `size` is at least `parallel_min` comes over ranged GETs of `part_size` bytes when the mirror
    honours ranges, on up to `connections` connections chosen adaptively (more while the throughput grows): see
    `mgdata.fetch.parallel`. Left unset, the three come from `MGDATA_FETCH_CONNECTIONS` (32 at most; 1 turns the
    parallel path off), `MGDATA_FETCH_PART_MIB` (the store's multipart part size, so fetched parts
    become store parts one to one) and `MGDATA_FETCH_PARALLEL_MIN_MIB` (64).
    """
    if not urls:
        raise ValueError(f"{label}: no URL to fetch from")
    check_key(key)
    if connections is None:
        connections = env_int("MGDATA_FETCH_CONNECTIONS", PARALLEL_CONNECTIONS)
    if part_size is None:
        part_size = env_int("MGDATA_FETCH_PART_MIB", 0, minimum=0) * MiB or _part_size(store)
    if parallel_min is None:
        parallel_min = env_int("MGDATA_FETCH_PARALLEL_MIN_MIB", PARALLEL_MIN // MiB, minimum=0) * MiB
    expected = normalise_checksums(checksums)
    emit = log or logger.info
    own = session is None
    session = session or new_session(pool=2)
    job = StreamFetch(
        store, key, label=label, size=size, expected=expected, session=session, timeout=timeout,
        max_attempts=max_attempts, waits=Backoff(backoff, max_backoff), emit=emit,
        progress=Progress(label, progress_every, emit), headers=headers or {},
    )  # fmt: skip
    failures: list[tuple[str, str, bool]] = []
    try:
        for i, url in enumerate(urls):
            try:
                if connections > 1 and size is not None and size >= parallel_min:
                    result = _run_parallel(job, url, connections, part_size)
                    if result is not None:
                        return result
                return job.run(url)
            except GiveUp as e:
                failures.append((redact_url(url), e.reason, e.integrity))
                if i + 1 < len(urls):
                    emit(f"{label}: {redact_url(url)}: {e.reason}; trying the next mirror")
    finally:
        if own:
            session.close()
    cls = ChecksumMismatch if all(integrity for _, _, integrity in failures) else FetchError
    raise fetch_error(cls, label, [(u, r) for u, r, _ in failures])


def _part_size(store: Store) -> int:
    """The store's multipart part size, so fetched parts become store parts one to one."""
    return getattr(store, "part_size", PARALLEL_PART_SIZE)


def _run_parallel(job: StreamFetch, url: str, connections: int, part_size: int) -> FetchResult | None:
    """The parallel path when the mirror honours ranges for this file; None means: use the single stream."""
    try:
        info = probe(
            url, session=job.session, timeout=job.timeout, max_attempts=2, backoff=job.waits.backoff,
            max_backoff=job.waits.max_backoff, log=job.emit, headers=job.headers,
        )  # fmt: skip
    except FetchError:
        return None  # the single stream reports this mirror's failure with its own retries
    if not info.accepts_ranges or info.size != job.size:
        return None
    try:
        return ParallelFetch(job, url, info, connections=connections, part_size=part_size).run()
    except NotRanged as e:
        job.emit(f"{job.label}: {redact_url(url)}: {e}; falling back to one stream")
        return None
