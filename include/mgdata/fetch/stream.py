"""The single-stream fetch strategy: one GET per attempt into one store writer, resumed with a Range request.

`StreamFetch(store, key, ...)` holds one file's fetch job (its settings, and the attempts and resumes counted over
every mirror); `run(url)` fetches from one mirror and raises `GiveUp` when that mirror cannot deliver a verified body.
`mgdata.fetch.http.fetch_to_store` picks this strategy or the ranged-parallel one (`mgdata.fetch.parallel`, which
shares the job's settings and counters).
"""

from __future__ import annotations

import time

from mgdata.fetch.transfer import (
    BODY_ERRORS,
    CHUNK,
    CONNECT_TIMEOUT,
    FATAL_REQUEST_ERRORS,
    RETRY_REQUEST_ERRORS,
    Digester,
    FetchResult,
    GiveUp,
    describe_error,
    human_bytes,
    human_duration,
    int_header,
    parse_content_range,
    retry_after_seconds,
    retryable_status,
    same_etag,
    verify_body,
)
from mgdata.redact import redact_url
from mgdata.storage import ObjectWriter, Store


class StreamFetch:
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
        """Fetch from one mirror; raises GiveUp when this mirror cannot deliver a verified body."""
        safe = redact_url(url)
        writer: ObjectWriter | None = None
        digester: Digester | None = None
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
                        raise GiveUp(f"{reason} (gave up after {failures} attempts)")
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
                except FATAL_REQUEST_ERRORS as e:
                    raise GiveUp(describe_error(e)) from None
                except RETRY_REQUEST_ERRORS as e:
                    failures, reason = failures + 1, describe_error(e, self.timeout)
                    continue

                with resp:
                    status = resp.status_code
                    if status == 416 and written and written == total:
                        break  # we already had every byte; the drop came right at the end
                    if retryable_status(status):
                        failures, reason = failures + 1, f"HTTP {status} {resp.reason}"
                        retry_after = retry_after_seconds(resp)
                        continue
                    if status == 416 and written:
                        reason = f"HTTP 416 resuming at byte {written} (the file shrank?); starting over"
                        restart()
                        failures += 1
                        continue
                    if status not in (200, 206):
                        raise GiveUp(f"HTTP {status} {resp.reason}".strip())

                    resp_etag = resp.headers.get("ETag")
                    if status == 206:
                        cr = parse_content_range(resp.headers.get("Content-Range"))
                        changed = (
                            not written
                            or cr is None
                            or cr[0] != written
                            or (total is not None and cr[2] is not None and cr[2] != total)
                            or (etag is not None and resp_etag is not None and not same_etag(resp_etag, etag))
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
                        total = int_header(resp, "Content-Length")
                        end = total
                        etag, last_modified = resp_etag, resp.headers.get("Last-Modified")
                    if self.size is not None and total is not None and total != self.size:
                        raise GiveUp(
                            f"size mismatch: expected {self.size} bytes, server announces {total}",
                            integrity=True,
                        )
                    if self.progress.total is None:
                        self.progress.total = total

                    if writer is None:
                        writer = self.store.new_writer(self.key)
                        digester = Digester(self.algorithms)
                    dropped: str | None = None
                    body = resp.raw.stream(CHUNK, decode_content=False)
                    while True:
                        try:
                            chunk = next(body)
                        except StopIteration:
                            break
                        except BODY_ERRORS as e:
                            dropped = describe_error(e, self.timeout)
                            break
                        writer.write(chunk)
                        digester.update(chunk)
                        written += len(chunk)
                        if self.size is not None and written > self.size:
                            raise GiveUp(
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
                raise GiveUp("no body received")
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
            f"{self.label}: fetched {human_bytes(written)} in {human_duration(seconds)} "
            f"({human_bytes(written / max(seconds, 1e-9))}/s{note}) from {safe}"
        )
        return FetchResult(
            url=safe, key=self.key, size=written, sha256=digests["sha256"], etag=etag, last_modified=last_modified,
            digests=digests, seconds=seconds, resumes=self.resumes, attempts=self.attempts,
        )  # fmt: skip
