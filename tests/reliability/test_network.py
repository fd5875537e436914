"""Network faults not covered by tests/integration/test_http_fetch.py: lying Content-Length, names that do not
resolve, TLS errors, and bursts of 500/503/429. Each either ends in a verified object or in a FetchError naming the
URL, and never leaves a partial object (or a temp file) behind."""

from __future__ import annotations

import datetime
import hashlib
import http.server
import os
import ssl
import threading
from pathlib import Path

import pytest

from mgdata.fetch.http import ChecksumMismatch, FetchError, fetch_to_store
from mgdata.storage import LocalStore
from offline_mirror.server import Fault, MirrorServer

NAME = "src/file.bin"
SIZE = 256 * 1024
FAST = {"backoff": 0.02, "max_backoff": 0.1, "timeout": 5}


@pytest.fixture(scope="module")
def payload() -> bytes:
    return os.urandom(SIZE)


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def assert_nothing_left(store: LocalStore, key: str) -> None:
    assert store.stat(key) is None
    assert list((store.root / LocalStore.TMP_DIR).glob("*")) == []


def lying_route(payload: bytes, claimed: int):
    """A route that always answers 200 with `Content-Length: claimed` and sends the whole payload (ignoring Range)."""

    def route(handler, relpath, method):
        handler.send_response(200)
        handler.send_header("Content-Length", str(claimed))
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True
        if method != "HEAD":
            try:
                handler.wfile.write(payload)
            except OSError:
                pass

    return route


@pytest.mark.parametrize("delta", [-1000, +1000], ids=["claims-less", "claims-more"])
@pytest.mark.parametrize("pinned", ["size", "sha256"])
def test_wrong_content_length_never_publishes(tmp_path, store, payload, delta, pinned):
    """A server whose Content-Length is wrong on every answer: short reads are retried, then a clear failure."""
    pin = (
        {"size": SIZE} if pinned == "size" else {"checksums": {"sha256": hashlib.sha256(payload).hexdigest()}}
    )
    with MirrorServer(tmp_path, routes=[("lie/", lying_route(payload, SIZE + delta))]) as srv:
        url = srv.url("lie/file.bin")
        with pytest.raises(FetchError) as err:
            fetch_to_store([url], store, "raw/f.bin", label="src/file", max_attempts=3, **pin, **FAST)
    assert url in str(err.value)
    assert_nothing_left(store, "raw/f.bin")


def test_content_length_too_long_once_is_resumed(tmp_path, store, payload):
    """One answer claims more than it sends (the connection then closes): the next request resumes with a Range."""
    (tmp_path / NAME).parent.mkdir(parents=True)
    (tmp_path / NAME).write_bytes(payload)
    with MirrorServer(tmp_path) as srv:
        srv.add_faults(NAME, Fault(drop_after=SIZE // 3, method="GET"))
        r = fetch_to_store([srv.url(NAME)], store, "raw/f.bin", label="src/file", size=SIZE, **FAST)
        ranges = [rng for m, _, rng in srv.requests if m == "GET"]
    assert r.resumes == 1 and ranges == [None, f"bytes={SIZE // 3}-"]
    assert store.read_bytes("raw/f.bin") == payload


def test_name_that_does_not_resolve_names_the_url(store):
    url = "http://nonexistent.invalid/coco/train2017.zip"
    with pytest.raises(FetchError) as err:
        fetch_to_store([url], store, "raw/f.bin", label="coco/train2017", max_attempts=2, **FAST)
    msg = str(err.value)
    assert not isinstance(err.value, ChecksumMismatch)
    assert msg.startswith(f"coco/train2017: {url}: connection error")
    assert_nothing_left(store, "raw/f.bin")


def test_https_to_a_plain_http_port_is_a_clear_tls_failure(tmp_path, store):
    with MirrorServer(tmp_path) as srv:
        url = srv.base_url.replace("http://", "https://") + "/x.zip"
        with pytest.raises(FetchError) as err:
            fetch_to_store([url], store, "raw/f.bin", label="src/x", max_attempts=2, **FAST)
    assert str(err.value).startswith(f"src/x: {url}: ")
    assert "SSL" in str(err.value) or "ssl" in str(err.value)
    assert_nothing_left(store, "raw/f.bin")


@pytest.fixture
def self_signed_server(tmp_path, payload):
    """A real TLS server on loopback with a certificate made here and trusted by nobody."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256())
    )  # fmt: skip
    pem = tmp_path / "tls.pem"
    pem.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pem)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    httpd.handle_error = lambda *a: None
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{httpd.server_address[1]}/file.bin"
    httpd.shutdown()
    httpd.server_close()


def test_untrusted_certificate_is_refused(self_signed_server, store):
    with pytest.raises(FetchError) as err:
        fetch_to_store([self_signed_server], store, "raw/f.bin", label="src/x", max_attempts=2, **FAST)
    assert str(err.value).startswith(f"src/x: {self_signed_server}: ")
    assert "certificate verify failed" in str(err.value)
    assert_nothing_left(store, "raw/f.bin")


BURST = [Fault(status=500), Fault(status=503, retry_after=0), Fault(status=429, retry_after=0.2)]


def test_burst_of_500_503_429_is_retried_to_success(tmp_path, store, payload):
    (tmp_path / NAME).parent.mkdir(parents=True)
    (tmp_path / NAME).write_bytes(payload)
    with MirrorServer(tmp_path) as srv:
        srv.add_faults(NAME, *BURST, *BURST)
        r = fetch_to_store([srv.url(NAME)], store, "raw/f.bin", label="src/file", max_attempts=7, **FAST)
    assert r.attempts == 7
    assert store.read_bytes("raw/f.bin") == payload


def test_endless_burst_fails_naming_every_mirror(tmp_path, store, payload):
    (tmp_path / NAME).parent.mkdir(parents=True)
    (tmp_path / NAME).write_bytes(payload)
    with MirrorServer(tmp_path) as srv:
        srv.add_faults(NAME, *(BURST * 4))
        urls = [srv.url(NAME), srv.url(NAME) + "?mirror=2"]
        with pytest.raises(FetchError) as err:
            fetch_to_store(urls, store, "raw/f.bin", label="src/file", max_attempts=3, **FAST)
    msg = str(err.value)
    assert msg.startswith("src/file: all 2 mirrors failed: ")
    for part in msg.split(": ", 2)[2].split(
        "; "
    ):  # each mirror by its URL (query redacted) and its last status
        assert part == f"{urls[0]}: HTTP 429 Too Many Requests (gave up after 3 attempts)"
    assert_nothing_left(store, "raw/f.bin")
