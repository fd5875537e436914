"""The parallel ranged-GET path of mgdata.fetch.http.fetch_to_store, against real HTTP on loopback, into a LocalStore
and into S3 (moto): correct bytes in order, checksums verified, a dropped part resumed, nothing published on a
mismatch, and the single stream when ranges are not honoured or the file is small.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from pathlib import Path

import pytest
from store_checks import assert_nothing_published

from mgdata.fetch.http import ChecksumMismatch, FetchError, fetch_to_store
from mgdata.fetch.parallel import START_CONNECTIONS
from mgdata.storage import LocalStore, MiB, S3Store, s3_client
from offline_mirror.server import Fault, MirrorServer

NAME = "big/archive.zip"
SIZE = 21 * MiB + 12345  # not a multiple of any part size: the last part is short
FAST = {"backoff": 0.05, "max_backoff": 1.0, "parallel_min": 1 * MiB, "connections": 4}
KEY = "raw/big/archive.zip"


@pytest.fixture(scope="module")
def payload() -> bytes:
    return os.urandom(SIZE)


@pytest.fixture
def server(tmp_path: Path, payload: bytes):
    path = tmp_path / "mirror" / NAME
    path.parent.mkdir(parents=True)
    path.write_bytes(payload)
    with MirrorServer(tmp_path / "mirror") as srv:
        yield srv


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path: Path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    client = s3_client(
        endpoint_url=request.getfixturevalue("moto_endpoint"),
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    bucket = f"parallel-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return S3Store(bucket, "store", client, part_size=5 * MiB)


def ranges(srv: MirrorServer) -> list[str]:
    return [r[2] for r in srv.requests if r[0] == "GET" and r[2]]


def test_parts_are_fetched_in_parallel_aligned_with_store_parts(server, store, payload):
    part = getattr(store, "part_size", 8 * MiB)
    sha256 = hashlib.sha256(payload).hexdigest()

    r = fetch_to_store(
        [server.url(NAME)], store, KEY, label="big", size=SIZE, checksums={"sha256": sha256}, **FAST
    )

    assert (r.size, r.sha256, r.resumes) == (SIZE, sha256, 0)
    assert store.read_bytes(KEY) == payload
    expected = [f"bytes={s}-{min(s + part, SIZE) - 1}" for s in range(0, SIZE, part)]
    assert sorted(ranges(server)) == sorted(expected)
    assert [m for m, *_ in server.requests].count("HEAD") == 1


def test_a_dropped_part_connection_is_resumed_where_it_stopped(server, store, payload):
    sha256 = hashlib.sha256(payload).hexdigest()
    server.add_faults(NAME, Fault(drop_after=1 * MiB, method="GET"))

    r = fetch_to_store(
        [server.url(NAME)], store, KEY, label="big", size=SIZE, checksums={"sha256": sha256}, **FAST
    )

    assert (r.sha256, r.resumes) == (sha256, 1)
    assert store.read_bytes(KEY) == payload
    part = getattr(store, "part_size", 8 * MiB)
    resumed = [h for h in ranges(server) if int(h.split("=")[1].split("-")[0]) % part]
    assert len(resumed) == 1 and int(resumed[0].split("=")[1].split("-")[0]) % part == 1 * MiB


def test_a_checksum_mismatch_publishes_nothing(server, store):
    with pytest.raises(ChecksumMismatch, match="sha256 mismatch"):
        fetch_to_store(
            [server.url(NAME)], store, KEY, label="big", size=SIZE, checksums={"sha256": "0" * 64}, **FAST
        )
    assert_nothing_published(store, KEY)
    assert len(ranges(server)) > 1  # it did go parallel


def test_a_server_ignoring_ranges_falls_back_to_one_stream(server, tmp_path, payload):
    store = LocalStore(tmp_path / "store")
    server.add_faults(NAME, Fault(ignore_range=True, method="GET"))

    r = fetch_to_store([server.url(NAME)], store, KEY, label="big", size=SIZE, **FAST)

    assert r.sha256 == hashlib.sha256(payload).hexdigest()
    assert store.read_bytes(KEY) == payload
    assert (None, "GET") in [(rng, m) for m, _, rng in server.requests]  # the single stream's plain GET


def test_a_small_file_takes_the_single_stream(server, tmp_path, payload):
    store = LocalStore(tmp_path / "store")

    r = fetch_to_store([server.url(NAME)], store, KEY, label="big", size=SIZE, parallel_min=SIZE + 1)

    assert (r.sha256, r.attempts) == (hashlib.sha256(payload).hexdigest(), 1)
    assert server.requests == [("GET", "/" + NAME, None)]


def test_the_environment_sets_connections_part_size_and_threshold(server, tmp_path, payload, monkeypatch):
    monkeypatch.setenv("MGDATA_FETCH_PARALLEL_MIN_MIB", "1")
    monkeypatch.setenv("MGDATA_FETCH_PART_MIB", "4")
    monkeypatch.setenv("MGDATA_FETCH_CONNECTIONS", "3")
    store = LocalStore(tmp_path / "store")

    fetch_to_store([server.url(NAME)], store, KEY, label="big", size=SIZE)

    assert store.read_bytes(KEY) == payload
    expected = [f"bytes={s}-{min(s + 4 * MiB, SIZE) - 1}" for s in range(0, SIZE, 4 * MiB)]
    assert sorted(ranges(server)) == sorted(expected)


def test_one_connection_in_the_environment_turns_the_parallel_path_off(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MGDATA_FETCH_PARALLEL_MIN_MIB", "1")
    monkeypatch.setenv("MGDATA_FETCH_CONNECTIONS", "1")

    fetch_to_store([server.url(NAME)], LocalStore(tmp_path / "store"), KEY, label="big", size=SIZE)

    assert server.requests == [("GET", "/" + NAME, None)]


def test_a_bad_setting_is_an_error_naming_it(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MGDATA_FETCH_CONNECTIONS", "0")

    with pytest.raises(ValueError, match=r"MGDATA_FETCH_CONNECTIONS must be at least 1 \(got 0\)"):
        fetch_to_store([server.url(NAME)], LocalStore(tmp_path / "store"), KEY, label="big", size=SIZE)


def test_a_part_that_keeps_failing_gives_up_and_publishes_nothing(server, store):
    server.add_faults(NAME, *[Fault(status=503, method="GET") for _ in range(8)])

    with pytest.raises(FetchError, match=r"part \d+/\d+ .*HTTP 503.*gave up after 2 attempts") as err:
        fetch_to_store([server.url(NAME)], store, KEY, label="big", size=SIZE, max_attempts=2, **FAST)

    assert not isinstance(err.value, ChecksumMismatch)
    assert_nothing_published(store, KEY)


class InFlight:
    """A route that serves the payload and records how many of its ranged GETs were in flight at once, and over how
    many distinct client connections they came (observed at the server)."""

    def __init__(self, path: Path):
        self.path, self.now, self.most, self.ports = path, 0, 0, set()
        self.lock = threading.Lock()

    def __call__(self, handler, relpath: str, method: str) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.ports.add(handler.client_address[1])
        try:
            handler.send_path(self.path, head=method == "HEAD")
        finally:
            with self.lock:
                self.now -= 1


def test_a_per_connection_cap_makes_it_open_more_connections(tmp_path, payload):
    """A server that caps each connection (1 MiB/s here) is fetched over more than the starting connections, up to
    the configured most, and the file still verifies."""
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "big.bin").write_bytes(payload)
    route = InFlight(tmp_path / "srv" / "big.bin")
    sha256 = hashlib.sha256(payload).hexdigest()
    with MirrorServer(tmp_path / "srv", rate_limit=1 * MiB, routes=[("capped/", route)]) as srv:
        r = fetch_to_store(
            [srv.url("capped/big.bin")], LocalStore(tmp_path / "store"), KEY, label="big", size=SIZE,
            checksums={"sha256": sha256}, part_size=1 * MiB, parallel_min=1 * MiB, connections=16,
        )  # fmt: skip

    assert (r.sha256, LocalStore(tmp_path / "store").read_bytes(KEY)) == (sha256, payload)
    assert START_CONNECTIONS < r.connections <= 16
    assert START_CONNECTIONS < route.most <= 16  # seen at the server: more GETs at once than it started with
    # each connection serves part after part (keep-alive); the probe's HEAD came over one more
    assert START_CONNECTIONS < len(route.ports) <= r.connections + 1 < SIZE // MiB


def test_the_most_connections_is_a_cap_below_the_start(server, tmp_path, payload):
    r = fetch_to_store(
        [server.url(NAME)], LocalStore(tmp_path / "store"), KEY, label="big", size=SIZE,
        part_size=1 * MiB, parallel_min=1 * MiB, connections=3,
    )  # fmt: skip

    assert r.connections == 3 and LocalStore(tmp_path / "store").read_bytes(KEY) == payload
