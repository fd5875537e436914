"""A loopback HTTP file server with fault injection, for tests, benchmarks and the offline demo.

`MirrorServer(root)` serves the files under `root` by URL path the way a plain static web server does: GET and HEAD,
single byte ranges (`Range: bytes=a-b`, `bytes=a-`, `bytes=-n`) answered with 206, `ETag` / `Last-Modified`,
`If-None-Match` and `If-Range`. No directory listings; anything outside `root` is a 404. Files are streamed in
256 KiB chunks, never read whole.

Faults make it misbehave on purpose, one fault consumed per matching request, in the order they were added::

    with MirrorServer(root) as srv:
        srv.add_faults("coco/train2017.zip", Fault(status=503), Fault(drop_after=1_000_000))
        ...  # first GET answers 503, the second drops the connection after 1 MB, the third is served normally

Standard library only, so the demo needs nothing beyond Python. `python -m offline_mirror.server ROOT` serves a folder.
"""

from __future__ import annotations

import argparse
import email.utils
import http.server
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

CHUNK = 256 * 1024
_HAVE_SENDFILE = hasattr(os, "sendfile")

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


@dataclass
class Fault:
    """One injected misbehaviour, consumed by the first request that matches it (path, and `method` if set)."""

    status: int | None = None  # answer this status instead (e.g. 503, 429, 404)
    retry_after: float | None = None  # with `status`: send a Retry-After header (seconds)
    drop_after: int | None = None  # send headers for the whole body, then hang up after this many body bytes
    ignore_range: bool = False  # answer 200 with the whole file even when a Range was asked for
    delay: float | None = None  # sleep this long before answering (a stalled server)
    method: str | None = None  # only consume this fault for this method ("GET" / "HEAD"); None = any


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real mirrors; every response carries a Content-Length
    server_version = "mgdata-mirror/0.1"
    sys_version = ""
    # Headers and body go out in separate writes: with Nagle's algorithm on, a small body waits for the client's
    # delayed ACK of the headers (40 ms on Linux), which made every Hub metadata call of a refresh cost 40 ms.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format, *args):  # noqa: A002 - quiet: the request log lives in MirrorServer.requests
        pass

    def handle(self):
        try:
            super().handle()
        except OSError:  # the client went away (its timeouts, our dropped-connection faults)
            self.close_connection = True

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    def do_POST(self):  # only stand-in routes (e.g. the Hub's paths-info API) answer POST
        self._serve(head=False, method="POST")

    # ----------------------------------------------------------------------------------------------------------------

    def _serve(self, *, head: bool, method: str | None = None) -> None:
        mirror = self.server.mirror
        method = method or ("HEAD" if head else "GET")
        relpath = unquote(self.path.split("?", 1)[0].split("#", 1)[0]).lstrip("/")
        range_header = self.headers.get("Range")
        mirror._log(method, "/" + relpath, range_header)
        fault = mirror._take_fault(relpath, method)

        if fault is not None and fault.delay:
            if mirror._stopping.wait(fault.delay):
                self.close_connection = True
                return
        if fault is not None and fault.status is not None:
            extra = {}
            if fault.retry_after is not None:
                extra["Retry-After"] = f"{fault.retry_after:g}"
            self._simple(fault.status, head, extra)
            return

        for prefix, route in mirror.routes:
            if relpath.startswith(prefix):
                route(self, relpath, method)
                return
        if method == "POST":
            self._simple(405, head)
            return
        path = mirror._resolve(relpath)
        if path is None:
            self._simple(404, head)
            return
        self.send_path(path, head=head, fault=fault)

    def send_path(
        self, path: Path, *, head: bool, fault: Fault | None = None, headers: dict | None = None
    ) -> None:
        """Answer with a file: validators, conditional requests, single ranges; `headers` are added (stand-ins)."""
        mirror = self.server.mirror
        range_header = self.headers.get("Range")
        st = path.stat()
        size = st.st_size
        etag = f'"{size:x}-{st.st_mtime_ns:x}"'
        last_modified = email.utils.formatdate(st.st_mtime, usegmt=True)
        validators = {"ETag": etag, "Last-Modified": last_modified, "Accept-Ranges": "bytes"}

        inm = self.headers.get("If-None-Match")
        if inm is not None and (inm.strip() == "*" or etag in [t.strip() for t in inm.split(",")]):
            self.send_response(304)
            for k, v in validators.items():
                self.send_header(k, v)
            self.end_headers()
            return

        start, end = 0, size  # [start, end)
        status = 200
        if range_header is not None and not (fault is not None and fault.ignore_range):
            if_range = self.headers.get("If-Range")
            if if_range is None or if_range.strip() in (etag, last_modified):
                parsed = _parse_range(range_header, size)
                if parsed == "unsatisfiable":
                    self._simple(416, head, {"Content-Range": f"bytes */{size}", **validators})
                    return
                if parsed is not None:
                    start, end = parsed
                    status = 206

        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        for k, v in validators.items():
            self.send_header(k, v)
        drop_after = fault.drop_after if fault is not None else None
        if drop_after is not None:
            self.send_header("Connection", "close")
        self.end_headers()
        if head:
            return
        limit = end - start if drop_after is None else min(end - start, drop_after)
        self._send_file(path, start, limit, mirror.rate_limit)
        if drop_after is not None and drop_after < end - start:
            self.close_connection = True
            try:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _send_file(self, path: Path, start: int, count: int, rate_limit: int | None) -> None:
        chunk = CHUNK if rate_limit is None else max(1, min(CHUNK, rate_limit // 20))
        began, sent = time.monotonic(), 0
        sock_fd = self.connection.fileno()
        with open(path, "rb") as f:
            f.seek(start)
            while sent < count:
                n = min(chunk, count - sent)
                if _HAVE_SENDFILE:  # zero-copy, so the server costs the client (often in-process) little CPU
                    done = os.sendfile(sock_fd, f.fileno(), start + sent, n)
                else:
                    data = f.read(n)
                    self.wfile.write(data)
                    done = len(data)
                if not done:
                    break  # the file shrank under us; the client sees a short body
                sent += done
                if rate_limit is not None:
                    ahead = sent / rate_limit - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)

    def send_json(
        self, status: int, value, headers: dict[str, str] | None = None, *, head: bool = False
    ) -> None:
        self._send_body(status, json.dumps(value).encode(), "application/json", headers, head)

    def _simple(self, status: int, head: bool, headers: dict[str, str] | None = None) -> None:
        body = f"{status} {self.responses.get(status, ('',))[0]}\n".encode()
        self._send_body(status, body, "text/plain; charset=utf-8", headers, head)

    def _send_body(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None, head: bool
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """A single `bytes=` range as [start, end), "unsatisfiable", or None (ignore the header: multiple or malformed)."""
    m = _RANGE.match(header)
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if first == "" and last == "":
        return None
    if first == "":  # suffix range: the last N bytes
        n = int(last)
        if n == 0:
            return "unsatisfiable"
        return max(0, size - n), size
    start = int(first)
    if last != "" and int(last) < start:
        return None
    if start >= size:
        return "unsatisfiable"
    end = size if last == "" else min(size, int(last) + 1)
    return start, end


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    mirror: MirrorServer

    def handle_error(self, request, client_address):  # quiet: clients hanging up is part of the tests
        pass


class MirrorServer:
    """Serve `root` over HTTP on a background thread. `port=0` picks a free port; read it back from `base_url`."""

    def __init__(
        self,
        root: str | Path,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        rate_limit: int | None = None,
        routes: list[tuple[str, Callable[[_Handler, str, str], None]]] | None = None,
    ):
        """`routes`: (URL path prefix, handler) pairs for stand-ins of APIs (the Hub, Drive) served beside the files;
        a handler gets (request handler, relative path, method) and answers through the request handler, e.g. with
        `send_path()` or `send_json()`."""
        self.root = Path(root).resolve()
        self.routes = list(routes or [])
        self.host = host
        self.port = port
        self.rate_limit = rate_limit  # bytes per second per connection
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self._faults: dict[str, list[Fault]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("MirrorServer is not started")
        host, port = self._httpd.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"

    def url(self, relpath: str) -> str:
        return f"{self.base_url}/{quote(relpath.lstrip('/'))}"

    def add_faults(self, relpath: str, *faults: Fault) -> None:
        with self._lock:
            self._faults.setdefault(relpath.lstrip("/"), []).extend(faults)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, relpath: str, method: str) -> Fault | None:
        with self._lock:
            queue = self._faults.get(relpath, [])
            for i, fault in enumerate(queue):
                if fault.method is None or fault.method.upper() == method:
                    return queue.pop(i)
        return None

    def _log(self, method: str, path: str, range_header: str | None) -> None:
        with self._lock:
            self.requests.append((method, path, range_header))

    def _resolve(self, relpath: str) -> Path | None:
        """The file a URL path names, or None: missing, a directory, or outside the root (traversal, symlinks)."""
        if not relpath or "\x00" in relpath or "\\" in relpath:
            return None
        try:
            path = (self.root / relpath).resolve()
        except (OSError, ValueError, RuntimeError):
            return None
        if not path.is_relative_to(self.root) or not path.is_file():
            return None
        return path

    def start(self) -> MirrorServer:
        if self._httpd is not None:
            return self
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        server_cls = type("_MirrorHTTPServer", (_Server,), {"address_family": family})
        self._stopping.clear()
        self._httpd = server_cls((self.host, self.port), _Handler)
        self._httpd.mirror = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="mirror-server", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Block until interrupted (Ctrl-C) or `stop()` is called from another thread."""
        self.start()
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stopping.set()  # wakes handlers sleeping on a `delay` fault
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> MirrorServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(
    root: str | Path, host: str = "127.0.0.1", port: int = 8000, *, rate_limit: int | None = None
) -> None:
    """Serve `root` until Ctrl-C, after printing the base URL (the demo reads it from stdout)."""
    srv = MirrorServer(root, host, port, rate_limit=rate_limit).start()
    print(srv.base_url, flush=True)
    srv.serve_forever()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m offline_mirror.server", description="Serve a folder over HTTP."
    )
    p.add_argument("root", type=Path)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--rate-limit", type=int, default=None, help="bytes per second per connection")
    args = p.parse_args(argv)
    if not args.root.is_dir():
        p.error(f"{args.root} is not a directory")
    serve(args.root, args.host, args.port, rate_limit=args.rate_limit)


if __name__ == "__main__":
    main()
