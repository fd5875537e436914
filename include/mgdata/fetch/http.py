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
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from mgdata.settings import env_int
from mgdata.storage import MiB, ObjectWriter, Store, check_key

USER_AGENT = "mgllava-data/0.1 (+https://github.com/)"
CHUNK = 1 * MiB
CONNECT_TIMEOUT = 10.0
# Big files come over parallel ranged GETs (mgdata.fetch.parallel): servers often cap each connection's rate.
PARALLEL_CONNECTIONS = 8
PARALLEL_MIN = 64 * MiB
PARALLEL_PART_SIZE = 8 * MiB

logger = logging.getLogger("mgdata.fetch")

# Errors that can end a response body early. urllib3 reports a body shorter than its Content-Length as a
# ProtocolError (IncompleteRead); requests' own wrappers are listed for callers that hand us iter_content streams.
_BODY_ERRORS = (
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.ReadTimeoutError,
    urllib3.exceptions.SSLError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    ConnectionError,
    TimeoutError,
)
# Request errors that will not get better by retrying the same URL.
_FATAL_REQUEST_ERRORS = (
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidSchema,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidHeader,
    requests.exceptions.TooManyRedirects,
)
_RETRY_REQUEST_ERRORS = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)
_RATELIMIT = re.compile(r";\s*r\s*=\s*(\d+)\s*;\s*t\s*=\s*(\d+)")
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


class FetchError(RuntimeError):
    """A file could not be fetched. The message names the label and every mirror tried with its failure.

    `label` and `failures` (a list of `(redacted url, reason)`) carry the same facts for programs.
    """

    label: str | None = None
    failures: Sequence[tuple[str, str]] = ()


class ChecksumMismatch(FetchError):
    """Every mirror delivered a complete body, but its size or a checksum disagreed with the catalog."""


@dataclass(frozen=True)
class RemoteInfo:
    url: str  # the final URL after redirects, without userinfo or query string
    size: int | None
    etag: str | None
    last_modified: str | None
    accepts_ranges: bool


@dataclass(frozen=True)
class FetchResult:
    url: str  # the mirror that delivered, without userinfo or query string
    key: str
    size: int
    sha256: str
    etag: str | None
    last_modified: str | None
    # every algorithm computed: sha256 always, plus those the catalog gave checksums for
    digests: dict[str, str]
    seconds: float
    resumes: int  # ranged continuations after a dropped connection (over the whole call)
    attempts: int  # HTTP requests made (over the whole call, all mirrors)


def new_session(*, pool: int = 16) -> requests.Session:
    """The project's HTTP session: a connection pool of `pool` per host, our User-Agent, no hidden retries.

    urllib3's own retries are off (total=0) because fetch/probe retry with backoff themselves and must see every
    failure to resume correctly.
    """
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=pool, pool_maxsize=pool, max_retries=Retry(total=0, read=False))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


# --------------------------------------------------------------------------------------------------------------------
# Messages: sizes, durations, and URLs and exception texts scrubbed of credentials


def redact_url(url: str) -> str:
    """`scheme://host[:port]/path`: userinfo, query string and fragment removed (they may carry tokens)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = parts.port
    except ValueError:
        return _scrub(url.split("?", 1)[0].split("#", 1)[0])
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _scrub(text: str) -> str:
    text = re.sub(r"(?<=://)[^/\s@'\"]*@", "", text)  # userinfo
    return re.sub(r"(/[^\s'\"?]*)\?[^\s'\")]*", r"\1", text)  # query strings after a path


def human_bytes(n: float) -> str:
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    raise AssertionError


def _duration(seconds: float) -> str:
    return str(timedelta(seconds=int(round(seconds))))


def _describe(exc: BaseException, timeout: float | None = None) -> str:
    """A short, credential-free reason for a request or body error."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connect timed out"
    if isinstance(exc, (requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError, TimeoutError)):
        return "read timed out" + (f" after {timeout:g} s" if timeout else "")
    cause, seen = exc, set()
    while id(cause) not in seen:
        seen.add(id(cause))
        nxt = getattr(cause, "reason", None)
        if not isinstance(nxt, BaseException):
            nxt = cause.__cause__ or cause.__context__
        if not isinstance(nxt, BaseException):
            break
        cause = nxt
    if isinstance(cause, OSError) and cause.strerror:
        detail = cause.strerror
    else:
        detail = str(cause) or type(cause).__name__
    kind = "connection error" if isinstance(exc, requests.exceptions.ConnectionError) else type(exc).__name__
    return _scrub(f"{kind}: {detail}")[:300]


def _retry_after(resp: requests.Response) -> float | None:
    """Seconds the server asks us to wait: `Retry-After`, else the IETF `RateLimit` header the Hugging Face Hub sends
    with a 429 (`"api";r=0;t=55`: no request left, the window resets in 55 s)."""
    value = resp.headers.get("Retry-After")
    if not value:
        limit = _RATELIMIT.search(resp.headers.get("RateLimit", ""))
        return float(limit.group(2)) if limit and int(limit.group(1)) == 0 else None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


def _retryable_status(status: int) -> bool:
    return status in (408, 429) or status >= 500


def _content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """`bytes a-b/total` → (a, b inclusive, total or None for `*`)."""
    m = _CONTENT_RANGE.match(value or "")
    if m is None:
        return None
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), int(m.group(2)), total


def _same_etag(a: str, b: str) -> bool:
    return a.removeprefix("W/") == b.removeprefix("W/")


def _int_header(resp: requests.Response, name: str) -> int | None:
    try:
        return int(resp.headers[name])
    except (KeyError, ValueError):
        return None


def _normalise_checksums(checksums: dict[str, str] | None) -> dict[str, str]:
    out = {}
    for algo, value in (checksums or {}).items():
        name = algo.lower().replace("-", "")
        if name not in hashlib.algorithms_guaranteed:
            raise ValueError(f"unsupported checksum algorithm {algo!r}")
        out[name] = value.strip().lower()
    return out


# --------------------------------------------------------------------------------------------------------------------
# Retry bookkeeping


class _GiveUp(Exception):
    """This mirror will not deliver: move on to the next one."""

    def __init__(self, reason: str, *, integrity: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.integrity = integrity  # the body was complete but its size or a checksum was wrong


def verify_body(written: int, digests: dict[str, str], *, size: int | None, expected: dict[str, str]) -> None:
    """The one check before an object is published: the size and every expected checksum match."""
    if size is not None and written != size:
        raise _GiveUp(f"size mismatch: expected {size} bytes, got {written}", integrity=True)
    for algo, want in expected.items():
        if digests[algo] != want:
            raise _GiveUp(f"{algo} mismatch: expected {want}, got {digests[algo]}", integrity=True)


class _Backoff:
    def __init__(self, backoff: float, max_backoff: float):
        self.backoff, self.max_backoff = backoff, max_backoff

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        d = min(self.max_backoff, self.backoff * 2 ** max(0, failures - 1))
        if retry_after is not None:
            d = max(d, min(retry_after, self.max_backoff))
        return d


class _Digester:
    """Hashes a stream on background threads, one per algorithm, so hashing overlaps network reads and store writes.

    hashlib releases the GIL on large buffers; on CPUs without SHA extensions sha256 alone runs at ~200 MB/s, which
    would otherwise cap a download. The queues are bounded (a few MiB), so memory stays flat.
    """

    def __init__(self, algorithms: list[str], depth: int = 8):
        self._hashes = {a: hashlib.new(a) for a in algorithms}
        self._queues: list[queue.Queue] = []
        self._threads: list[threading.Thread] = []
        for algo, h in self._hashes.items():
            q: queue.Queue = queue.Queue(maxsize=depth)
            t = threading.Thread(target=self._consume, args=(h, q), name=f"fetch-{algo}", daemon=True)
            t.start()
            self._queues.append(q)
            self._threads.append(t)

    @staticmethod
    def _consume(h, q: queue.Queue) -> None:
        while (chunk := q.get()) is not None:
            h.update(chunk)

    def update(self, chunk: bytes) -> None:
        for q in self._queues:
            q.put(chunk)

    def close(self) -> None:
        """Finish the queued chunks and stop the threads (idempotent)."""
        for q in self._queues:
            q.put(None)
        for t in self._threads:
            t.join()
        self._queues, self._threads = [], []

    def hexdigests(self) -> dict[str, str]:
        self.close()
        return {a: h.hexdigest() for a, h in self._hashes.items()}


class _Progress:
    def __init__(self, label: str, every: float, emit: Callable[[str], None]):
        self.label, self.every, self.emit = label, every, emit
        self.total: int | None = None
        self._t = time.monotonic()
        self._done = 0

    def reset(self, done: int = 0) -> None:
        self._t, self._done = time.monotonic(), done

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now - self._t < self.every:
            return
        rate = max(0, done - self._done) / max(now - self._t, 1e-6)
        self._t, self._done = now, done
        msg = f"{self.label}: {human_bytes(done)}"
        if self.total:
            msg += f" of {human_bytes(self.total)} ({100 * done // self.total}%)"
        msg += f" at {human_bytes(rate)}/s"
        if self.total and rate > 0:
            msg += f", ETA {_duration(max(0, self.total - done) / rate)}"
        self.emit(msg)


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
    waits = _Backoff(backoff, max_backoff)
    safe = redact_url(url)
    failures, reason = 0, ""
    try:
        while True:
            retry_after = None
            try:
                return _probe_once(session, url, timeout, headers or {})
            except _RETRY_REQUEST_ERRORS as e:
                reason = _describe(e, timeout)
            except _RetryStatus as e:
                reason, retry_after = e.reason, e.retry_after
            except _GiveUp as e:
                raise _error(FetchError, None, [(safe, e.reason)]) from None
            except _FATAL_REQUEST_ERRORS as e:
                raise _error(FetchError, None, [(safe, _describe(e))]) from None
            failures += 1
            if failures >= max_attempts:
                raise _error(FetchError, None, [(safe, f"{reason} (gave up after {failures} attempts)")])
            delay = waits.delay(failures, retry_after)
            emit(f"{safe}: {reason}; retrying in {delay:.3g} s")
            time.sleep(delay)
    finally:
        if own:
            session.close()


class _RetryStatus(Exception):
    def __init__(self, resp: requests.Response):
        self.reason = f"HTTP {resp.status_code} {resp.reason}".strip()
        self.retry_after = _retry_after(resp)


def _check(resp: requests.Response) -> None:
    if resp.status_code < 300:
        return
    if _retryable_status(resp.status_code):
        raise _RetryStatus(resp)
    raise _GiveUp(f"HTTP {resp.status_code} {resp.reason}".strip())


def _probe_once(session: requests.Session, url: str, timeout: float, extra: dict[str, str]) -> RemoteInfo:
    headers = {**extra, "Accept-Encoding": "identity"}
    with session.head(url, headers=headers, allow_redirects=True, timeout=(CONNECT_TIMEOUT, timeout)) as r:
        if r.status_code not in (403, 405, 501):
            _check(r)
            return RemoteInfo(
                url=redact_url(r.url),
                size=_int_header(r, "Content-Length"),
                etag=r.headers.get("ETag"),
                last_modified=r.headers.get("Last-Modified"),
                accepts_ranges=r.headers.get("Accept-Ranges", "").strip().lower() == "bytes",
            )
    # HEAD refused: ask for the first byte; the body is never read past it.
    headers["Range"] = "bytes=0-0"
    with session.get(url, headers=headers, stream=True, timeout=(CONNECT_TIMEOUT, timeout)) as r:
        _check(r)
        cr = _content_range(r.headers.get("Content-Range")) if r.status_code == 206 else None
        return RemoteInfo(
            url=redact_url(r.url),
            size=cr[2]
            if cr is not None
            else (_int_header(r, "Content-Length") if r.status_code == 200 else None),
            etag=r.headers.get("ETag"),
            last_modified=r.headers.get("Last-Modified"),
            accepts_ranges=r.status_code == 206,
        )


def _error(cls: type[FetchError], label: str | None, failures: list[tuple[str, str]]) -> FetchError:
    listed = "; ".join(f"{u}: {r}" for u, r in failures)
    if label is None:
        msg = listed
    elif len(failures) == 1:
        msg = f"{label}: {listed}"
    else:
        msg = f"{label}: all {len(failures)} mirrors failed: {listed}"
    err = cls(msg)
    err.label = label
    err.failures = failures
    return err


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

    A file whose `size` is at least `parallel_min` comes over `connections` ranged GETs of `part_size` bytes when the
    mirror honours ranges: see `mgdata.fetch.parallel`. Left unset, the three come from `MGDATA_FETCH_CONNECTIONS`
    (8; 1 turns the parallel path off), `MGDATA_FETCH_PART_MIB` (the store's multipart part size, so fetched parts
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
    expected = _normalise_checksums(checksums)
    emit = log or logger.info
    own = session is None
    session = session or new_session(pool=2)
    job = _Fetch(
        store, key, label=label, size=size, expected=expected, session=session, timeout=timeout,
        max_attempts=max_attempts, waits=_Backoff(backoff, max_backoff), emit=emit,
        progress=_Progress(label, progress_every, emit), headers=headers or {},
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
            except _GiveUp as e:
                failures.append((redact_url(url), e.reason, e.integrity))
                if i + 1 < len(urls):
                    emit(f"{label}: {redact_url(url)}: {e.reason}; trying the next mirror")
    finally:
        if own:
            session.close()
    cls = ChecksumMismatch if all(integrity for _, _, integrity in failures) else FetchError
    raise _error(cls, label, [(u, r) for u, r, _ in failures])


def _part_size(store: Store) -> int:
    """The store's multipart part size, so fetched parts become store parts one to one."""
    return getattr(store, "part_size", PARALLEL_PART_SIZE)


def _run_parallel(job: _Fetch, url: str, connections: int, part_size: int) -> FetchResult | None:
    """The parallel path when the mirror honours ranges for this file; None means: use the single stream."""
    from mgdata.fetch.parallel import NotRanged, ParallelFetch

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


class _Fetch:
    def __init__(self, store: Store, key: str, *, label, size, expected, session, timeout, max_attempts, waits, emit,
                 progress, headers):  # fmt: skip
        self.store, self.key, self.label, self.size, self.expected = store, key, label, size, expected
        self.session, self.timeout, self.max_attempts, self.waits = session, timeout, max_attempts, waits
        self.emit, self.progress, self.headers = emit, progress, headers
        self.algorithms = sorted({"sha256", *expected})
        self.started = time.monotonic()
        self.attempts = 0
        self.resumes = 0

    def run(self, url: str) -> FetchResult:
        """Fetch from one mirror; raises _GiveUp when this mirror cannot deliver a verified body."""
        safe = redact_url(url)
        writer: ObjectWriter | None = None
        digester: _Digester | None = None
        written = 0  # bytes in the writer
        best = 0  # the most bytes this mirror ever got us to: progress resets the failure count
        total: int | None = None  # the file's full size as the server announced it
        etag = last_modified = None
        failures, reason, retry_after = 0, "", None
        self.progress.total = self.size
        self.progress.reset()

        def restart() -> None:
            nonlocal writer, written, digester
            if writer is not None:
                writer.abort()
            if digester is not None:
                digester.close()
            writer, written, digester = None, 0, None
            self.progress.reset()

        try:
            while True:
                if failures:
                    if failures >= self.max_attempts:
                        raise _GiveUp(f"{reason} (gave up after {failures} attempts)")
                    delay = self.waits.delay(failures, retry_after)
                    self.emit(f"{self.label}: {safe}: {reason}; retrying in {delay:.3g} s")
                    time.sleep(delay)
                retry_after = None
                # identity: the stored bytes are the file's bytes, never re-encoded by the server or decoded by us
                headers = {**self.headers, "Accept-Encoding": "identity"}
                if written:
                    headers["Range"] = f"bytes={written}-"
                    validator = etag if etag and not etag.startswith("W/") else last_modified
                    if validator:
                        headers["If-Range"] = validator
                self.attempts += 1
                try:
                    resp = self.session.get(
                        url, headers=headers, stream=True, timeout=(CONNECT_TIMEOUT, self.timeout)
                    )
                except _FATAL_REQUEST_ERRORS as e:
                    raise _GiveUp(_describe(e)) from None
                except _RETRY_REQUEST_ERRORS as e:
                    failures, reason = failures + 1, _describe(e, self.timeout)
                    continue

                with resp:
                    status = resp.status_code
                    if status == 416 and written and written == total:
                        break  # we already had every byte; the drop came right at the end
                    if _retryable_status(status):
                        failures, reason = failures + 1, f"HTTP {status} {resp.reason}"
                        retry_after = _retry_after(resp)
                        continue
                    if status == 416 and written:
                        reason = f"HTTP 416 resuming at byte {written} (the file shrank?); starting over"
                        restart()
                        failures += 1
                        continue
                    if status not in (200, 206):
                        raise _GiveUp(f"HTTP {status} {resp.reason}".strip())

                    resp_etag = resp.headers.get("ETag")
                    if status == 206:
                        cr = _content_range(resp.headers.get("Content-Range"))
                        changed = (
                            not written
                            or cr is None
                            or cr[0] != written
                            or (total is not None and cr[2] is not None and cr[2] != total)
                            or (
                                etag is not None and resp_etag is not None and not _same_etag(resp_etag, etag)
                            )
                        )
                        if changed:
                            restart()
                            failures, reason = failures + 1, "unusable partial response; starting over"
                            continue
                        self.resumes += 1
                        end = cr[1] + 1
                        if total is None:
                            total = cr[2]
                    else:
                        if written:
                            self.emit(
                                f"{self.label}: {safe}: server sent the whole file again; starting over"
                            )
                            restart()
                        total = _int_header(resp, "Content-Length")
                        end = total
                        etag, last_modified = resp_etag, resp.headers.get("Last-Modified")
                    if self.size is not None and total is not None and total != self.size:
                        raise _GiveUp(
                            f"size mismatch: expected {self.size} bytes, server announces {total}",
                            integrity=True,
                        )
                    if self.progress.total is None:
                        self.progress.total = total

                    if writer is None:
                        writer = self.store.new_writer(self.key)
                        digester = _Digester(self.algorithms)
                    dropped: str | None = None
                    body = resp.raw.stream(CHUNK, decode_content=False)
                    while True:
                        try:
                            chunk = next(body)
                        except StopIteration:
                            break
                        except _BODY_ERRORS as e:
                            dropped = _describe(e, self.timeout)
                            break
                        writer.write(chunk)
                        digester.update(chunk)
                        written += len(chunk)
                        if self.size is not None and written > self.size:
                            raise _GiveUp(
                                f"size mismatch: expected {self.size} bytes, got more", integrity=True
                            )
                        self.progress.update(written)
                    if dropped is None and end is not None and written < end:
                        dropped = f"body ended after {written} of {end} bytes"
                    if dropped is not None:
                        if written > best:
                            best, failures = written, 1
                        else:
                            failures += 1
                        reason = f"connection dropped at byte {written}: {dropped}"
                        continue
                    if status == 206 and total is not None and written < total:
                        # the server sent a shorter range than asked, as it may: ask for the rest at once
                        failures = 0
                        continue
                    break

            # Cannot happen (the loop only ends after a 200/206 body), but never commit an unverified writer.
            if writer is None or digester is None:
                raise _GiveUp("no body received")
            digests = digester.hexdigests()
            verify_body(written, digests, size=self.size, expected=self.expected)
            writer.commit()
            writer = None
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        finally:
            if digester is not None:
                digester.close()

        seconds = time.monotonic() - self.started
        note = f", {self.resumes} resume{'s' if self.resumes != 1 else ''}" if self.resumes else ""
        self.emit(
            f"{self.label}: fetched {human_bytes(written)} in {_duration(seconds)} "
            f"({human_bytes(written / max(seconds, 1e-9))}/s{note}) from {safe}"
        )
        return FetchResult(
            url=safe, key=self.key, size=written, sha256=digests["sha256"], etag=etag, last_modified=last_modified,
            digests=digests, seconds=seconds, resumes=self.resumes, attempts=self.attempts,
        )  # fmt: skip
