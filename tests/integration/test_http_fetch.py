"""mgdata.fetch.http against real HTTP on loopback (offline_mirror.server), into a LocalStore and into S3 (moto).

Every file is random bytes generated here; the server misbehaves on cue through `Fault`s. Backoff is 0.05 s so the
retries cost milliseconds.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import os
import re
import socket
import time
import uuid
from pathlib import Path

import pytest
import requests
from store_checks import assert_nothing_published

from mgdata.fetch.http import ChecksumMismatch, FetchError, fetch_to_store, probe
from mgdata.storage import LocalStore, MiB, S3Store, s3_client
from offline_mirror.server import Fault, MirrorServer

NAME = "coco/train2017.zip"
SIZE = 12 * MiB  # > 2 S3 parts of 5 MiB, so the S3 runs go through a real multipart upload
DROP = 7 * MiB  # a drop inside the second part
FAST = {"backoff": 0.05, "max_backoff": 2.0}


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def payload() -> bytes:
    return os.urandom(SIZE)


@pytest.fixture
def root(tmp_path: Path, payload: bytes) -> Path:
    path = tmp_path / "mirror" / NAME
    path.parent.mkdir(parents=True)
    path.write_bytes(payload)
    return tmp_path / "mirror"


@pytest.fixture
def mirror_server(root: Path):
    with MirrorServer(root) as srv:
        yield srv


@pytest.fixture(scope="module")
def moto_client():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    client = s3_client(
        endpoint_url=f"http://{host}:{port}",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket="mgdata-test")
    yield client
    server.stop()


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path: Path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    client = request.getfixturevalue("moto_client")
    return S3Store("mgdata-test", f"store/{uuid.uuid4().hex}", client, part_size=5 * MiB)


@pytest.fixture
def local_store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def gets(srv: MirrorServer) -> list[tuple[str, str, str | None]]:
    return [r for r in srv.requests if r[0] == "GET"]


def dead_url(path: str = "x.zip") -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{path}"


# --- fetch_to_store -----------------------------------------------------------------------------


def test_plain_fetch_verifies_sha256_and_md5(mirror_server, local_store, payload):
    sha256, md5 = hashlib.sha256(payload).hexdigest(), hashlib.md5(payload).hexdigest()

    r = fetch_to_store(
        [mirror_server.url(NAME)], local_store, "raw/coco/train2017.zip", label="coco/train2017",
        size=SIZE, checksums={"sha256": sha256.upper(), "md5": md5}, **FAST,
    )  # fmt: skip

    assert (r.sha256, r.digests, r.size) == (sha256, {"sha256": sha256, "md5": md5}, SIZE)
    assert (r.resumes, r.attempts, r.key) == (0, 1, "raw/coco/train2017.zip")
    assert r.etag and r.etag.startswith('"') and r.last_modified
    assert local_store.read_bytes("raw/coco/train2017.zip") == payload
    assert_nothing_published(local_store, "raw/other")  # and no temp file left behind


def test_dropped_connection_is_resumed_with_a_range(mirror_server, store, payload):
    mirror_server.add_faults(NAME, Fault(drop_after=DROP))

    r = fetch_to_store(
        [mirror_server.url(NAME)], store, "raw/f.zip", label="coco/train2017",
        size=SIZE, checksums={"sha256": hashlib.sha256(payload).hexdigest()}, **FAST,
    )  # fmt: skip

    assert r.resumes >= 1
    assert gets(mirror_server) == [("GET", f"/{NAME}", None), ("GET", f"/{NAME}", f"bytes={DROP}-")]
    assert store.read_bytes("raw/f.zip") == payload
    assert store.stat("raw/f.zip").size == SIZE


def test_server_ignoring_range_after_a_drop_restarts_from_zero(mirror_server, store, payload):
    mirror_server.add_faults(NAME, Fault(drop_after=DROP), Fault(ignore_range=True))

    r = fetch_to_store([mirror_server.url(NAME)], store, "raw/f.zip", label="coco/train2017", **FAST)

    assert [g[2] for g in gets(mirror_server)] == [None, f"bytes={DROP}-"]  # asked for a range, got a 200
    assert r.resumes == 0 and r.size == SIZE
    assert r.sha256 == hashlib.sha256(payload).hexdigest()  # the hash restarted with the bytes
    assert store.read_bytes("raw/f.zip") == payload


def test_503_is_retried_then_succeeds(mirror_server, local_store, payload):
    mirror_server.add_faults(NAME, Fault(status=503), Fault(status=502))

    r = fetch_to_store([mirror_server.url(NAME)], local_store, "raw/f.zip", label="coco/train2017", **FAST)

    assert r.attempts == 3 and len(gets(mirror_server)) == 3
    assert local_store.read_bytes("raw/f.zip") == payload


def test_429_retry_after_is_honoured(mirror_server, local_store, payload):
    mirror_server.add_faults(NAME, Fault(status=429, retry_after=1))

    t0 = time.monotonic()
    r = fetch_to_store([mirror_server.url(NAME)], local_store, "raw/f.zip", label="coco/train2017", **FAST)
    elapsed = time.monotonic() - t0

    assert elapsed >= 0.95  # Retry-After: 1 beats the 0.05 s backoff
    assert r.attempts == 2
    assert local_store.read_bytes("raw/f.zip") == payload


@pytest.mark.parametrize("algo", ["sha256", "md5"])
def test_wrong_checksum_raises_and_publishes_nothing(mirror_server, store, algo):
    wrong = "0" * (64 if algo == "sha256" else 32)

    with pytest.raises(ChecksumMismatch) as err:
        fetch_to_store(
            [mirror_server.url(NAME)],
            store,
            "raw/f.zip",
            label="coco/train2017",
            checksums={algo: wrong},
            **FAST,
        )

    msg = str(err.value)
    assert msg.startswith(
        f"coco/train2017: {mirror_server.url(NAME)}: {algo} mismatch: expected {wrong}, got "
    )
    assert len(gets(mirror_server)) == 1  # a wrong body is not downloaded again from the same mirror
    assert_nothing_published(store, "raw/f.zip")


@pytest.mark.parametrize("size", [SIZE - 1, SIZE + 1])
def test_wrong_size_raises_and_publishes_nothing(mirror_server, store, size):
    with pytest.raises(ChecksumMismatch, match=rf"size mismatch: expected {size} bytes"):
        fetch_to_store(
            [mirror_server.url(NAME)], store, "raw/f.zip", label="coco/train2017", size=size, **FAST
        )

    assert_nothing_published(store, "raw/f.zip")


def test_first_mirror_404_falls_through_to_the_second(mirror_server, local_store, payload, caplog):
    urls = [mirror_server.url("gone/train2017.zip"), mirror_server.url(NAME)]

    with caplog.at_level(logging.INFO, logger="mgdata.fetch"):
        r = fetch_to_store(urls, local_store, "raw/f.zip", label="coco/train2017", **FAST)

    assert r.url == mirror_server.url(NAME)
    assert [g[1] for g in gets(mirror_server)] == ["/gone/train2017.zip", f"/{NAME}"]  # a 404 is not retried
    assert local_store.read_bytes("raw/f.zip") == payload
    assert "HTTP 404" in caplog.text


def test_all_mirrors_dead_names_every_url_without_secrets(mirror_server, local_store, caplog):
    first = dead_url("a/train2017.zip")
    second = mirror_server.url(NAME)
    mirror_server.add_faults(NAME, *[Fault(status=503) for _ in range(3)])
    secret_first = first.replace("http://", "http://user:hunter2@") + "?token=SECRET"
    secret_second = second + "?X-Amz-Signature=SECRET"

    with caplog.at_level(logging.INFO, logger="mgdata.fetch"), pytest.raises(FetchError) as err:
        fetch_to_store(
            [secret_first, secret_second],
            local_store,
            "raw/f.zip",
            label="coco/train2017",
            max_attempts=3,
            **FAST,
        )

    msg = str(err.value)
    assert not isinstance(err.value, ChecksumMismatch)
    assert msg.startswith("coco/train2017: all 2 mirrors failed: ")
    assert f"{first}: connection error" in msg and f"{second}: HTTP 503" in msg
    assert err.value.failures[0][0] == first and err.value.failures[1][0] == second
    for text in (msg, caplog.text):
        assert "SECRET" not in text and "hunter2" not in text
    assert_nothing_published(local_store, "raw/f.zip")


def test_stalled_server_times_out_and_is_retried(mirror_server, local_store, payload):
    mirror_server.add_faults(NAME, Fault(delay=3.0))

    t0 = time.monotonic()
    r = fetch_to_store(
        [mirror_server.url(NAME)], local_store, "raw/f.zip", label="coco/train2017", timeout=0.5, **FAST
    )

    assert r.attempts == 2
    assert (
        time.monotonic() - t0 < 2.5
    )  # gave up on the stalled answer after the read timeout, not after the stall
    assert local_store.read_bytes("raw/f.zip") == payload


def test_stall_mid_body_is_resumed(mirror_server, local_store, payload):
    # The first answer hangs up early, the resumed one stalls before its headers; the third finishes the file.
    mirror_server.add_faults(NAME, Fault(drop_after=DROP), Fault(delay=3.0))

    r = fetch_to_store(
        [mirror_server.url(NAME)], local_store, "raw/f.zip", label="coco/train2017", timeout=0.5, **FAST
    )

    assert r.resumes == 1 and r.attempts == 3
    assert [g[2] for g in gets(mirror_server)] == [None, f"bytes={DROP}-", f"bytes={DROP}-"]
    assert local_store.read_bytes("raw/f.zip") == payload


def test_progress_lines(mirror_server, local_store):
    lines: list[str] = []

    fetch_to_store(
        [mirror_server.url(NAME)],
        local_store,
        "raw/f.zip",
        label="coco/train2017",
        progress_every=0,
        log=lines.append,
    )

    progress = re.compile(
        r"^coco/train2017: [\d.]+ (B|KiB|MiB) of 12\.0 MiB \(\d+%\) at [\d.]+ \w+/s(, ETA \d+:\d\d:\d\d)?$"
    )
    assert any(progress.match(line) for line in lines), lines[:3]
    assert lines[-1].startswith("coco/train2017: fetched 12.0 MiB in ")


# --- probe --------------------------------------------------------------------------------------


def test_probe_reports_size_etag_and_last_modified(mirror_server, root):
    st = (root / NAME).stat()

    info = probe(mirror_server.url(NAME))

    assert info.size == SIZE and info.accepts_ranges
    assert info.etag == f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
    assert info.last_modified == email.utils.formatdate(st.st_mtime, usegmt=True)
    assert info.url == mirror_server.url(NAME)
    assert mirror_server.requests == [("HEAD", f"/{NAME}", None)]


def test_probe_falls_back_to_a_ranged_get_when_head_is_refused(mirror_server):
    mirror_server.add_faults(NAME, Fault(status=405, method="HEAD"))

    info = probe(mirror_server.url(NAME))

    assert info.size == SIZE and info.accepts_ranges and info.etag
    assert mirror_server.requests == [("HEAD", f"/{NAME}", None), ("GET", f"/{NAME}", "bytes=0-0")]


def test_probe_retries_503_and_gives_up_on_404(mirror_server):
    mirror_server.add_faults(NAME, Fault(status=503, method="HEAD"))
    assert probe(mirror_server.url(NAME), **FAST).size == SIZE
    assert len(mirror_server.requests) == 2

    with pytest.raises(FetchError, match=r"/nothing\.zip: HTTP 404"):
        probe(mirror_server.url("nothing.zip"), **FAST)


# --- the server itself --------------------------------------------------------------------------


def test_mirror_server_http_semantics(mirror_server, payload):
    url = mirror_server.url(NAME)
    with requests.Session() as s:
        full = s.get(url)
        etag, lm = full.headers["ETag"], full.headers["Last-Modified"]
        assert full.status_code == 200 and full.content == payload

        part = s.get(url, headers={"Range": "bytes=10-19"})
        assert (part.status_code, part.headers["Content-Range"], part.content) == (
            206, f"bytes 10-19/{SIZE}", payload[10:20],
        )  # fmt: skip
        tail = s.get(url, headers={"Range": "bytes=-5"})
        assert (tail.status_code, tail.content) == (206, payload[-5:])
        assert s.get(url, headers={"Range": f"bytes={SIZE}-"}).status_code == 416
        assert s.get(url, headers={"If-None-Match": etag}).status_code == 304
        assert s.get(url, headers={"Range": "bytes=5-", "If-Range": etag}).status_code == 206
        assert s.get(url, headers={"Range": "bytes=5-", "If-Range": lm}).status_code == 206
        assert s.get(url, headers={"Range": "bytes=5-", "If-Range": '"other"'}).status_code == 200
        assert s.head(url).headers["Content-Length"] == str(SIZE)
        for bad in ("/../mirror/" + NAME, "/%2e%2e/%2e%2e/etc/passwd", "/coco/", "/", "/nope"):
            assert s.get(mirror_server.base_url + bad).status_code == 404, bad
