"""S3 on loopback in its own process, and a reverse proxy in front of it that counts every request by verb.

`moto_server(port)` starts moto's console script (`moto_server`, the server ThreadedMotoServer runs, outside the test's
interpreter) and returns once it answers. `S3Counter(upstream)` listens on another loopback port and forwards each
request unchanged (path-style, headers and body as sent, so signatures and presigned URLs stay valid) to `upstream`;
it classifies each one with `classify` and counts requests, request body bytes (in) and response body bytes (out).
`snapshot()` freezes the counters; the difference of two snapshots is what the store was asked between them, and
`Phases` names such differences (a run, a refresh) and prints them per image. `refuse(seconds)` takes the endpoint
away for a while, as an S3 outage does: the listening socket is closed (new connections are refused) and every open
keep-alive connection is closed at its next request, unanswered; then the proxy listens on the same port again.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from processes import process_cpu_seconds

# The verbs, in table order. MPU_*: the multipart calls (Create `POST ?uploads`, UploadPart `PUT ?partNumber&uploadId`,
# Complete `POST ?uploadId`, Abort `DELETE ?uploadId`). LIST: ListObjects(V2) and ListMultipartUploads on a bucket.
VERBS = (
    "PUT",
    "GET",
    "HEAD",
    "LIST",
    "MPU_CREATE",
    "MPU_PART",
    "MPU_COMPLETE",
    "MPU_ABORT",
    "DELETE",
    "COPY",
    "OTHER",
)
WRITES = ("PUT", "COPY", "MPU_CREATE")  # the requests that create an object (counted per area too)
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


def classify(method: str, path: str, query: dict[str, list[str]], headers) -> str:
    """The S3 operation of a path-style request, as one of VERBS."""
    on_bucket = "/" not in unquote(path).strip("/")  # "/bucket" or "/bucket/": no key
    if method == "PUT":
        if "partNumber" in query and "uploadId" in query:
            return "MPU_PART"
        if on_bucket:
            return "OTHER"  # CreateBucket and bucket settings
        return "COPY" if "x-amz-copy-source" in headers else "PUT"
    if method == "GET":
        if on_bucket:
            listing = {"list-type", "prefix", "uploads", "delimiter", "continuation-token"} & set(query)
            return "LIST" if listing or not query else "OTHER"
        return "OTHER" if "uploadId" in query else "GET"
    if method == "HEAD":
        return "HEAD"
    if method == "POST":
        if "uploads" in query:
            return "MPU_CREATE"
        if "uploadId" in query:
            return "MPU_COMPLETE"
        return "DELETE" if "delete" in query else "OTHER"
    if method == "DELETE":
        return "MPU_ABORT" if "uploadId" in query else "DELETE"
    return "OTHER"


@dataclass(frozen=True)
class Counts:
    """Requests per (verb, area), the area being the first key segment under the counter's prefix ("data", "runs",
    ...; a bucket-wide request has the area ""); request and response body bytes."""

    areas: Counter = field(default_factory=Counter)
    bytes_in: int = 0
    bytes_out: int = 0
    # requests per (verb, the first two key segments under the prefix), e.g. ("PUT", "data/coco"): which source's
    # layout prefix a phase touched
    prefixes: Counter = field(default_factory=Counter)
    refused: int = 0  # requests closed unanswered while the endpoint was down (`S3Counter.refuse`)
    # CPU seconds the store itself cost on this machine: the S3 server's process (when the counter knows its pid)
    # and the proxy's request threads. A real S3 endpoint costs the machine neither.
    server_cpu: float = 0.0
    proxy_cpu: float = 0.0

    def __sub__(self, earlier: Counts) -> Counts:
        return Counts(
            self.areas - earlier.areas,
            self.bytes_in - earlier.bytes_in,
            self.bytes_out - earlier.bytes_out,
            self.prefixes - earlier.prefixes,
            self.refused - earlier.refused,
            self.server_cpu - earlier.server_cpu,
            self.proxy_cpu - earlier.proxy_cpu,
        )

    @property
    def verbs(self) -> Counter:
        out: Counter = Counter()
        for (verb, _), n in self.areas.items():
            out[verb] += n
        return out

    @property
    def written(self) -> Counter:
        """Objects created per area (PutObject, CopyObject, CreateMultipartUpload)."""
        out: Counter = Counter()
        for (verb, area), n in self.areas.items():
            if verb in WRITES:
                out[area] += n
        return out

    @property
    def requests(self) -> int:
        return sum(self.areas.values())

    @property
    def multipart(self) -> int:
        return sum(n for verb, n in self.verbs.items() if verb.startswith("MPU_"))


class S3Counter:
    """A counting reverse proxy on 127.0.0.1 in front of the S3 endpoint `upstream` (http://host:port)."""

    def __init__(self, upstream: str, *, area_prefix: str = "/", server_pid: int | None = None):
        self.upstream = urlsplit(upstream).netloc
        self.server_pid = server_pid  # the S3 server's process, whose CPU time each snapshot reads
        self._proxy_cpu = 0.0
        self.area_prefix = (
            area_prefix  # e.g. "/bucket/store/": writes are counted per next segment ("data", ...)
        )
        self._lock = threading.Lock()
        self._areas: Counter = Counter()
        self._prefixes: Counter = Counter()
        self._bytes = [0, 0]
        self._refused = 0
        self.down = threading.Event()  # set while `refuse` holds the endpoint away
        self._port = 0
        self._listen()

    def _listen(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), self._handler())
        self._server.daemon_threads = True
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-counter", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> S3Counter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def refuse(self, seconds: float) -> None:
        """The endpoint is down for `seconds`: connections refused, open ones closed unanswered; then back on the
        same port. Blocks for the whole outage."""
        self.down.set()
        self.stop()
        try:
            time.sleep(seconds)
        finally:
            self.down.clear()
            for attempt in range(50):  # the port is ours; a moment may pass before the kernel lets go of it
                try:
                    self._listen()
                    break
                except OSError:
                    if attempt == 49:
                        raise
                    time.sleep(0.1)
            self.start()

    def refused_connection(self) -> bool:
        """True (and counted) when a request arrives while the endpoint is down."""
        if not self.down.is_set():
            return False
        with self._lock:
            self._refused += 1
        return True

    def snapshot(self) -> Counts:
        server_cpu = (process_cpu_seconds(self.server_pid) or 0.0) if self.server_pid else 0.0
        with self._lock:
            return Counts(
                Counter(self._areas),
                *self._bytes,
                Counter(self._prefixes),
                self._refused,
                server_cpu,
                self._proxy_cpu,
            )

    def spent(self, cpu_seconds: float) -> None:
        """CPU time one request cost the proxy's thread that forwarded it."""
        with self._lock:
            self._proxy_cpu += cpu_seconds

    def record(self, verb: str, path: str, query: str, bytes_in: int, bytes_out: int) -> None:
        key = self.key(path, parse_qs(query).get("prefix", [""])[0])
        area = key.split("/", 1)[0] if key is not None else ""
        with self._lock:
            self._areas[verb, area] += 1
            if key is not None:
                self._prefixes[verb, "/".join(key.split("/", 2)[:2])] += 1
            self._bytes[0] += bytes_in
            self._bytes[1] += bytes_out

    def area(self, path: str, list_prefix: str = "") -> str:
        """The first key segment under `area_prefix` of the object `path` names, or of a listing's prefix."""
        key = self.key(path, list_prefix)
        return "" if key is None else key.split("/", 1)[0]

    def key(self, path: str, list_prefix: str = "") -> str | None:
        """The key under `area_prefix` that `path` names (or a listing's prefix); None outside it."""
        key = unquote(path)
        if list_prefix:
            key = key.rstrip("/") + "/" + list_prefix
        if not key.startswith(self.area_prefix):
            return None
        return key[len(self.area_prefix) :]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        counter = self

        class Handler(_ForwardingHandler):
            def forwarded(self, verb: str, path: str, query: str, bytes_in: int, bytes_out: int) -> None:
                counter.record(verb, path, query, bytes_in, bytes_out)

            def refused(self) -> bool:
                return counter.refused_connection()

            def spent(self, cpu_seconds: float) -> None:
                counter.spent(cpu_seconds)

            def connection_to_upstream(self) -> http.client.HTTPConnection:
                return http.client.HTTPConnection(counter.upstream, timeout=120)

        return Handler


class _ForwardingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore's pool expects
    # An answer goes out as two writes (headers, then body): with Nagle's algorithm the body would wait for the
    # client's delayed ACK of the headers, up to 40 ms per answer with a body (every GET), which S3 does not cost.
    disable_nagle_algorithm = True

    def forwarded(self, verb: str, path: str, query: str, bytes_in: int, bytes_out: int) -> None:
        raise NotImplementedError

    def connection_to_upstream(self) -> http.client.HTTPConnection:
        raise NotImplementedError

    def refused(self) -> bool:
        return False

    def spent(self, cpu_seconds: float) -> None:
        pass

    def finish(self) -> None:
        super().finish()
        if getattr(self, "_conn", None) is not None:
            self._conn.close()

    def log_message(self, format, *args) -> None:  # quiet: botocore retries show up in the counts instead
        pass

    def do_GET(self) -> None:
        self._forward()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def _forward(self) -> None:
        started = time.thread_time()
        try:
            self._forward_one()
        finally:
            self.spent(time.thread_time() - started)

    def _forward_one(self) -> None:
        if self.refused():  # the endpoint is down: close without an answer, as a dying server does
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        split = urlsplit(self.path)
        query = parse_qs(split.query, keep_blank_values=True)
        verb = classify(self.command, split.path, query, self.headers)
        body = self._body()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        status, reason, answer_headers, answer = self._upstream(headers, body)
        # counted before the answer goes out: a client that has its answer finds the request in the counts
        self.forwarded(verb, split.path, split.query, len(body), len(answer))
        self.send_response_only(status, reason)
        for k, v in answer_headers:
            if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                self.send_header(k, v)
        length = dict((k.lower(), v) for k, v in answer_headers).get("content-length")
        self.send_header("Content-Length", length if self.command == "HEAD" and length else str(len(answer)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _upstream(self, headers: dict, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """Send the request upstream on this connection's own keep-alive connection (one new attempt if it broke)."""
        for attempt in (1, 2):
            conn = getattr(self, "_conn", None) or self.connection_to_upstream()
            self._conn = conn
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.reason, resp.getheaders(), resp.read()
            except (http.client.HTTPException, OSError):
                conn.close()
                self._conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


class Phases:
    """The counting proxy's figures, one `Counts` per named phase of the story."""

    def __init__(self, counter: S3Counter):
        self.counter = counter
        self.counts: dict[str, Counts] = {}

    @contextlib.contextmanager
    def measure(self, name: str):
        before = self.counter.snapshot()
        try:
            yield
        finally:
            self.counts[name] = self.counter.snapshot() - before

    def __getitem__(self, name: str) -> Counts:
        return self.counts[name]

    def table(self, images: int) -> str:
        """S3 requests per image member, per verb and phase (verbs no phase used are left out)."""
        used = [v for v in VERBS if any(c.verbs[v] for c in self.counts.values())]
        lines = [f"S3 requests per image ({images} image members), counted at the server side"]
        head = f"{'phase':24}" + "".join(f"{v:>8}" for v in used)
        lines.append(
            head
            + f"{'all':>8}{'requests':>10}{'MB in':>8}{'MB out':>8}{'server CPU s':>14}{'proxy CPU s':>13}"
        )
        for name, c in self.counts.items():
            per_image = "".join(f"{c.verbs[v] / images:8.3f}" for v in used) + f"{c.requests / images:8.3f}"
            lines.append(
                f"{name:24}{per_image}{c.requests:10}{c.bytes_in / 1e6:8.2f}{c.bytes_out / 1e6:8.2f}"
                f"{c.server_cpu:14.1f}{c.proxy_cpu:13.1f}"
            )
        return "\n".join(lines)


def moto_server(port: int, timeout: float = 30) -> subprocess.Popen:
    """moto's S3 server in its own process on 127.0.0.1:`port`; returns once it answers."""
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1).close()
            return proc
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"moto_server did not answer on port {port} in {timeout} s")
