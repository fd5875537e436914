"""Parallel ranged GETs for big files: up to `connections` workers fetch `part_size` ranges, written to the store in
order.

A slow academic server often caps each connection's rate, not the total, so one stream of a 20 GB archive crawls
while eight finish eight times sooner. How many connections pay depends on the server: the fetch starts with
`START_CONNECTIONS` and, while the body's throughput still grows by `GROW_GAIN` with each doubling, doubles them up to
`connections` (and at most what keeps the reorder buffer within `BUFFER_BUDGET`); a doubling that gained nothing is
taken back (the extra workers stop after their current part), so a server with no per-connection cap is not hammered
for nothing. `fetch_to_store` takes this path for a file whose catalog size is at least
`parallel_min` when a HEAD shows the server honours byte ranges; otherwise (and whenever a range answer is unusable:
the server sent the whole file, or the file changed under us) it falls back to the single-stream path.

Each worker takes the next part, GETs `Range: bytes=a-b` guarded by `If-Range`, and resumes a dropped connection from
the last byte it got; failures are retried with the same backoff and attempt budget as the single stream. Parts go
into a bounded reorder buffer (at most the live connections + 4 parts in memory); the calling thread writes them to
the store writer strictly in order and hashes the same bytes, so sha256 is computed over the file in order and the
store's multipart parts line up with the fetched parts when `part_size` equals the store's. The object is committed
only when the byte count and every checksum match; on any failure the writer is aborted and nothing is published.
"""

from __future__ import annotations

import hashlib
import http.client
import threading
import time
from dataclasses import dataclass

from mgdata.fetch.transfer import (
    BODY_ERRORS,
    CHUNK,
    CONNECT_TIMEOUT,
    FATAL_REQUEST_ERRORS,
    RETRY_REQUEST_ERRORS,
    FetchResult,
    GiveUp,
    RemoteInfo,
    describe_error,
    human_bytes,
    new_session,
    parse_content_range,
    retry_after_seconds,
    retryable_status,
    same_etag,
    verify_body,
)
from mgdata.redact import redact_url

START_CONNECTIONS = 8  # what the fixed default used to be: a server without a per-connection cap is saturated
GROW_GAIN = 1.15  # a doubling of connections must raise the throughput by 15 % to be kept
SETTLE = 0.2  # seconds new connections get to ramp up before their throughput is measured
MEASURE = 0.5  # seconds of body counted per throughput reading
BUFFER_BUDGET = 256 * 1024 * 1024  # the reorder buffer at most: fewer connections when parts are big


class NotRanged(Exception):
    """The server's range answers cannot be trusted for this file: use the single-stream path instead."""


class _Stopped(Exception):
    """Another part failed; this worker stops quietly."""


@dataclass(frozen=True)
class _Part:
    index: int
    start: int
    end: int  # exclusive

    @property
    def size(self) -> int:
        return self.end - self.start


class ParallelFetch:
    """One file from one mirror over up to `connections` ranged GETs at once. `job` is the single-stream
    `StreamFetch` whose settings, store writer target and counters (attempts, resumes) this shares."""

    def __init__(self, job, url: str, info: RemoteInfo, *, connections: int, part_size: int):
        self.job, self.url, self.info = job, url, info
        # every live connection holds a part, plus 4 ahead of the write cursor (see `window`)
        self.cap = min(connections, max(START_CONNECTIONS, BUFFER_BUDGET // part_size - 4))
        self.part_size = part_size
        self.total = info.size
        self.validator = info.etag if info.etag and not info.etag.startswith("W/") else info.last_modified
        self.parts = [
            _Part(i, start, min(start + part_size, self.total))
            for i, start in enumerate(range(0, self.total, part_size))
        ]
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._taken = 0  # next part index a worker may take
        self._written = 0  # next part index the writer needs
        self._ready: dict[int, bytearray] = {}
        self._error: BaseException | None = None
        self._received = 0  # body bytes received by all workers (the throughput the controller reads)
        self._spare: list[bytearray] = []  # part buffers written and hashed, for the next parts
        self._target = min(START_CONNECTIONS, self.cap, len(self.parts))  # workers that may take parts
        self.peak = self._target  # most workers that ever ran at once

    @property
    def window(self) -> int:
        """Parts held in memory at most: fetched ahead of the write cursor."""
        return self._target + 4

    # -- workers ------------------------------------------------------------------------------------------------------

    def _take(self, slot: int) -> _Part | None:
        with self._cond:
            while not self._stop.is_set() and self._taken < len(self.parts) and slot < self._target:
                if self._taken < self._written + self.window:
                    part = self.parts[self._taken]
                    self._taken += 1
                    return part
                self._cond.wait()
            return None

    def _worker(self, session, slot: int) -> None:
        try:
            while (part := self._take(slot)) is not None:
                data = self._get(session, part)
                with self._cond:
                    self._ready[part.index] = data
                    self._cond.notify_all()
        except _Stopped:
            pass
        except BaseException as e:
            with self._cond:
                if self._error is None:
                    self._error = e
                self._stop.set()
                self._cond.notify_all()

    def _get(self, session, part: _Part) -> bytearray:
        """The bytes of one part, resuming a dropped connection where it stopped; raises GiveUp or NotRanged.

        The body is read straight into the part's buffer (`readinto` of http.client's response under urllib3's):
        urllib3's own `read()` copies every chunk twice more, which at a few hundred MB/s is most of our CPU.
        """
        job, buf, got = self.job, self._buffer(part.size), 0
        view = memoryview(buf)
        failures, reason, retry_after = 0, "", None
        where = f"part {part.index + 1}/{len(self.parts)} (bytes {part.start}-{part.end - 1})"
        while got < part.size:
            if self._stop.is_set():
                raise _Stopped
            if failures:
                if failures >= job.max_attempts:
                    raise GiveUp(f"{where}: {reason} (gave up after {failures} attempts)")
                delay = job.waits.delay(failures, retry_after)
                job.emit(f"{job.label}: {redact_url(self.url)}: {where}: {reason}; retrying in {delay:.3g} s")
                if self._stop.wait(delay):
                    raise _Stopped
            retry_after = None
            start = part.start + got
            headers = {**job.headers, "Accept-Encoding": "identity", "Range": f"bytes={start}-{part.end - 1}"}
            if self.validator:
                headers["If-Range"] = self.validator
            with self._cond:
                job.attempts += 1
            try:
                resp = session.get(
                    self.url, headers=headers, stream=True, timeout=(CONNECT_TIMEOUT, job.timeout)
                )
            except FATAL_REQUEST_ERRORS as e:
                raise GiveUp(describe_error(e)) from None
            except RETRY_REQUEST_ERRORS as e:
                failures, reason = failures + 1, describe_error(e, job.timeout)
                continue
            before = got
            with resp:
                status = resp.status_code
                if retryable_status(status):
                    failures, reason, retry_after = (
                        failures + 1,
                        f"HTTP {status} {resp.reason}",
                        retry_after_seconds(resp),
                    )
                    continue
                if status == 200:
                    raise NotRanged(f"{where}: the server answered a range with the whole file")
                if status != 206:
                    raise GiveUp(f"{where}: HTTP {status} {resp.reason}".strip())
                cr = parse_content_range(resp.headers.get("Content-Range"))
                etag = resp.headers.get("ETag")
                if (
                    cr is None
                    or cr[0] != start
                    or cr[2] != self.total
                    or (self.info.etag and etag and not same_etag(etag, self.info.etag))
                ):
                    raise NotRanged(f"{where}: unusable partial response (the file changed?)")
                if cr[1] >= part.end:
                    raise GiveUp(f"{where}: the server sent more than the range asked", integrity=True)
                if before:
                    with self._cond:
                        job.resumes += 1
                fp = getattr(resp.raw, "_fp", None)  # http.client's response; urllib3's readinto() copies
                readinto = fp.readinto if hasattr(fp, "readinto") else resp.raw.readinto
                dropped = None
                try:
                    while got < part.size:
                        n = readinto(view[got : min(got + CHUNK, part.size)])
                        if not n:
                            break
                        got += n
                        with self._cond:
                            self._received += n
                        if self._stop.is_set():
                            raise _Stopped
                except (*BODY_ERRORS, http.client.HTTPException) as e:
                    dropped = describe_error(e, job.timeout)
                if got == part.size and fp is not None and fp.isclosed():
                    resp.raw.release_conn()  # the body is fully read: the connection can serve the next part
            if dropped is None and got < part.size:
                dropped = f"body ended after {got - before} bytes"
            if dropped is not None:
                failures = 1 if got > before else failures + 1
                reason = f"connection dropped at byte {part.start + got}: {dropped}"
        return buf

    def _buffer(self, size: int) -> bytearray:
        """A part buffer: a spare one when the size fits. Fresh 8 MiB buffers cost a page fault per 4 KiB, which
        at a few hundred MB/s is a tenth of the CPU."""
        with self._cond:
            if size == self.part_size and self._spare:
                return self._spare.pop()
        return bytearray(size)

    # -- the controller: how many connections -------------------------------------------------------------------

    def _throughput(self) -> float | None:
        """Bytes per second received over the next MEASURE seconds, after SETTLE; None once the fetch stops."""
        if self._stop.wait(SETTLE):
            return None
        with self._cond:
            before, t = self._received, time.monotonic()
        if self._stop.wait(MEASURE):
            return None
        with self._cond:
            return (self._received - before) / (time.monotonic() - t)

    def _grow(self, start) -> None:
        """Double the workers while that raises the throughput by GROW_GAIN; take back a doubling that did not."""
        rate = self._throughput()
        while rate is not None and self._target < self.cap:
            with self._cond:
                if self._taken >= len(self.parts):
                    return  # every part is taken: more connections would have nothing to do
                before, self._target = self._target, min(self.cap, 2 * self._target, len(self.parts))
                self.peak = max(self.peak, self._target)
            for slot in range(before, self._target):
                start(slot)
            grown = self._throughput()
            if grown is None:
                return
            if grown < rate * GROW_GAIN:
                with self._cond:
                    self._target = before
                    self._cond.notify_all()  # the extra workers stop after their current part
                return
            rate = grown

    # -- the writer ---------------------------------------------------------------------------------------------------

    def run(self) -> FetchResult:
        job, safe = self.job, redact_url(self.url)
        job.progress.total = self.total
        job.progress.reset()
        session = new_session(pool=self.cap)
        session.headers.update(job.session.headers)
        session.cookies.update(job.session.cookies)  # a Drive download's confirmation cookies
        writer = job.store.new_writer(job.key)
        # Hashed here, after the write: the buffer is then free for the next part (the Digester's queue would keep it).
        hashes = {algo: hashlib.new(algo) for algo in job.algorithms}
        workers: list[threading.Thread] = []

        def start(slot: int) -> None:
            t = threading.Thread(
                target=self._worker, args=(session, slot), name=f"fetch-part-{slot}", daemon=True
            )
            workers.append(t)
            t.start()

        controller = threading.Thread(target=self._grow, args=(start,), name="fetch-connections", daemon=True)
        written = 0
        try:
            for slot in range(self._target):
                start(slot)
            controller.start()
            while self._written < len(self.parts):
                with self._cond:
                    while self._written not in self._ready and self._error is None:
                        self._cond.wait()
                    if self._error is not None:
                        raise self._error
                    data = self._ready.pop(self._written)
                    self._written += 1
                    self._cond.notify_all()
                writer.write(
                    data
                )  # the stores copy or write out before they return, so the buffer can be reused
                for h in hashes.values():
                    h.update(data)
                written += len(data)
                if len(data) == self.part_size:
                    with self._cond:
                        self._spare.append(data)
                job.progress.update(written)
            digests = {algo: h.hexdigest() for algo, h in hashes.items()}
            verify_body(written, digests, size=job.size, expected=job.expected)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        finally:
            with self._cond:
                self._stop.set()
                self._cond.notify_all()
            if controller.is_alive():
                controller.join()
            for t in list(workers):
                t.join()
            session.close()
        seconds = time.monotonic() - job.started
        job.emit(
            f"{job.label}: fetched {human_bytes(written)} in {seconds:.1f} s "
            f"({human_bytes(written / max(seconds, 1e-9))}/s over up to {self.peak} connections) from {safe}"
        )
        return FetchResult(
            url=safe, key=job.key, size=written, sha256=digests["sha256"], etag=self.info.etag,
            last_modified=self.info.last_modified, digests=digests, seconds=seconds, resumes=job.resumes,
            attempts=job.attempts, connections=self.peak,
        )  # fmt: skip
