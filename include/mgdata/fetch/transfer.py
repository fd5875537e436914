"""Transfer primitives shared by the fetch strategies and adapters: the HTTP session, retries, errors, digests,
verification and the progress log.

`new_session()` is the one HTTP session factory (no hidden urllib3 retries: callers retry with `Backoff`, honouring
`Retry-After` through `retry_after_seconds`). `GiveUp` ends one mirror's attempt; `FetchError`/`ChecksumMismatch`
(built by `fetch_error`) end a file's. `Digester` hashes a body on background threads while it streams, and
`verify_body` is the one check before an object is published. `Progress` logs size, rate and ETA.
"""

from __future__ import annotations

import email.utils
import hashlib
import queue
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from mgdata.redact import redact_text
from mgdata.storage import MiB

USER_AGENT = "mgllava-data/0.1 (+https://github.com/)"
CHUNK = 1 * MiB
CONNECT_TIMEOUT = 10.0

# Errors that can end a response body early. urllib3 reports a body shorter than its Content-Length as a
# ProtocolError (IncompleteRead); requests' own wrappers are listed for callers that hand us iter_content streams.
BODY_ERRORS = (
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
FATAL_REQUEST_ERRORS = (
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidSchema,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidHeader,
    requests.exceptions.TooManyRedirects,
)
RETRY_REQUEST_ERRORS = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)
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
    connections: int = 1  # connections the body came over at most (parallel ranged GETs: chosen adaptively)


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
# Messages: sizes, durations, and exception texts scrubbed of credentials


def human_bytes(n: float) -> str:
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    raise AssertionError


def human_duration(seconds: float) -> str:
    return str(timedelta(seconds=int(round(seconds))))


def describe_error(exc: BaseException, timeout: float | None = None) -> str:
    """A short, credential-free reason for a request or body error (requests' or urllib3's)."""
    refused = isinstance(exc, urllib3.exceptions.NewConnectionError)  # a subclass of ConnectTimeoutError
    if isinstance(exc, requests.exceptions.ConnectTimeout) or (
        isinstance(exc, urllib3.exceptions.ConnectTimeoutError) and not refused
    ):
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
    connection = (requests.exceptions.ConnectionError, urllib3.exceptions.NewConnectionError,
                  urllib3.exceptions.ProtocolError)  # fmt: skip
    kind = "connection error" if isinstance(exc, connection) else type(exc).__name__
    return redact_text(f"{kind}: {detail}")[:300]


def retry_after_seconds(resp: requests.Response | urllib3.BaseHTTPResponse) -> float | None:
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


def retryable_status(status: int) -> bool:
    return status in (408, 429) or status >= 500


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """`bytes a-b/total` → (a, b inclusive, total or None for `*`)."""
    m = _CONTENT_RANGE.match(value or "")
    if m is None:
        return None
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), int(m.group(2)), total


def same_etag(a: str, b: str) -> bool:
    return a.removeprefix("W/") == b.removeprefix("W/")


def int_header(resp: requests.Response, name: str) -> int | None:
    try:
        return int(resp.headers[name])
    except (KeyError, ValueError):
        return None


def normalise_checksums(checksums: dict[str, str] | None) -> dict[str, str]:
    out = {}
    for algo, value in (checksums or {}).items():
        name = algo.lower().replace("-", "")
        if name not in hashlib.algorithms_guaranteed:
            raise ValueError(f"unsupported checksum algorithm {algo!r}")
        out[name] = value.strip().lower()
    return out


# --------------------------------------------------------------------------------------------------------------------
# Retry bookkeeping


class GiveUp(Exception):
    """This mirror will not deliver: move on to the next one."""

    def __init__(self, reason: str, *, integrity: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.integrity = integrity  # the body was complete but its size or a checksum was wrong


def verify_body(written: int, digests: dict[str, str], *, size: int | None, expected: dict[str, str]) -> None:
    """The one check before an object is published: the size and every expected checksum match."""
    if size is not None and written != size:
        raise GiveUp(f"size mismatch: expected {size} bytes, got {written}", integrity=True)
    for algo, want in expected.items():
        if digests[algo] != want:
            raise GiveUp(f"{algo} mismatch: expected {want}, got {digests[algo]}", integrity=True)


class Backoff:
    def __init__(self, backoff: float, max_backoff: float):
        self.backoff, self.max_backoff = backoff, max_backoff

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        d = min(self.max_backoff, self.backoff * 2 ** max(0, failures - 1))
        if retry_after is not None:
            d = max(d, min(retry_after, self.max_backoff))
        return d


class Digester:
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


class Progress:
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
            msg += f", ETA {human_duration(max(0, self.total - done) / rate)}"
        self.emit(msg)


# --------------------------------------------------------------------------------------------------------------------
# The error a caller sees: every mirror tried, with its reason


def fetch_error(cls: type[FetchError], label: str | None, failures: list[tuple[str, str]]) -> FetchError:
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
