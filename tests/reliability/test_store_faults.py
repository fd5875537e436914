"""Store faults: S3 answering 503 SlowDown or 403 InvalidAccessKeyId (a loopback proxy in front of moto, since moto
injects neither) and a local store on a full disk (a 2 MiB tmpfs). Each is retried or fails with a StoreError naming
the store and the key, and never leaves a partial object. (A missing bucket: tests/integration/test_storage.py.)"""

from __future__ import annotations

import http.client
import http.server
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

from mgdata.storage import LocalStore, MiB, S3Store, StoreError, s3_client

SECRET = "s3-secret-never-shown-7f3a"
ERROR_XML = '<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{msg}</Message></Error>'


class FaultyS3Proxy:
    """Forwards every request to moto unchanged, except that the next `faults` requests get an S3 error instead."""

    def __init__(self, upstream: str):
        self.upstream = upstream.removeprefix("http://")
        self.faults: list[tuple[int, str, str]] = []
        self.seen = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.seen += 1
                if proxy.faults:
                    status, code, msg = proxy.faults.pop(0)
                    data = ERROR_XML.format(code=code, msg=msg).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in (
                        "content-length",
                        "transfer-encoding",
                        "connection",
                        "date",
                        "server",
                    ):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def proxied(moto_endpoint):
    bucket = f"faults-{uuid.uuid4().hex[:12]}"
    direct = s3_client(
        endpoint_url=moto_endpoint,
        aws_access_key_id="k",
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )
    direct.create_bucket(Bucket=bucket)
    proxy = FaultyS3Proxy(moto_endpoint)
    client = s3_client(
        endpoint_url=proxy.url, aws_access_key_id="k", aws_secret_access_key=SECRET, region_name="us-east-1"
    )
    yield proxy, S3Store(bucket, "p", client, part_size=5 * MiB), direct, bucket
    proxy.close()


def impatient(store: S3Store) -> S3Store:
    """The same store with 3 attempts instead of 8, so that exhausting the retries takes a second, not a minute."""
    from botocore.config import Config

    client = s3_client(
        endpoint_url=store.client.meta.endpoint_url, aws_access_key_id="k", aws_secret_access_key=SECRET,
        region_name="us-east-1", config=Config(retries={"mode": "standard", "max_attempts": 3}),
    )  # fmt: skip
    return S3Store(store.bucket, store.prefix, client, part_size=store.part_size)


def test_s3_slowdown_burst_is_retried(proxied):
    proxy, store, _, _ = proxied
    proxy.faults = [(503, "SlowDown", "Please reduce your request rate.")] * 3

    store.put_bytes("data/a.jpg", b"jpeg bytes")

    assert proxy.faults == [] and store.read_bytes("data/a.jpg") == b"jpeg bytes"


def test_s3_endless_slowdown_is_a_store_error_naming_the_store(proxied):
    proxy, store, direct, bucket = proxied
    proxy.faults = [(503, "SlowDown", "Please reduce your request rate.")] * 50

    with pytest.raises(StoreError) as err:
        impatient(store).put_bytes("data/a.jpg", b"jpeg bytes")

    assert str(err.value).startswith(f"PutObject s3://{bucket}/p/data/a.jpg failed: SlowDown")
    assert 50 - len(proxy.faults) == 4  # the first attempt and botocore's 3 retries, then the error
    assert direct.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_s3_multipart_upload_failing_midway_leaves_no_object_and_no_upload(proxied):
    proxy, store, direct, bucket = proxied
    store = impatient(store)
    with pytest.raises(StoreError, match=rf"s3://{bucket}/p/raw/big.zip failed: SlowDown"):
        with store.writer("raw/big.zip") as w:
            w.write(os.urandom(6 * MiB))  # the upload is created and its first part sent
            proxy.faults = [(503, "SlowDown", "Please reduce your request rate.")] * 100
            w.write(os.urandom(5 * MiB))
    assert direct.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    # The writer's own abort met the same SlowDown (it is best effort); the next attempt of the task aborts it.
    assert len(direct.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) == 1
    proxy.faults = []
    assert store.abort_uploads("raw/big.zip") == 1
    assert direct.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.mark.parametrize("op", ["put", "stat", "list"])
def test_s3_wrong_credentials_name_the_store_and_hide_the_secret(proxied, op):
    proxy, store, _, bucket = proxied
    proxy.faults = [(403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist.")]

    with pytest.raises(StoreError) as err:
        if op == "put":
            store.put_bytes("data/a.jpg", b"x")
        elif op == "stat":
            store.stat("data/a.jpg")
        else:
            list(store.list("data/"))

    msg = str(err.value)
    assert f"s3://{bucket}/p/data/" in msg
    assert (
        msg.endswith("failed: 403") if op == "stat" else "failed: InvalidAccessKeyId" in msg
    )  # HEAD has no body
    assert SECRET not in msg and SECRET not in repr(err.value.__cause__)


# --- local store on a full disk ---------------------------------------------------------------------------------

FILL = """
import os, sys
from mgdata.storage import LocalStore, StoreError
store = LocalStore(sys.argv[1])
store.put_bytes("data/small.jpg", b"s" * 1000)
try:
    with store.writer("raw/big.zip") as w:
        for _ in range(64):
            w.write(os.urandom(64 * 1024))  # 4 MiB into 2 MiB
except StoreError as e:
    print(e)
    sys.exit(3)
"""


def _limit_file_size():  # the fallback when tmpfs cannot be mounted: a 2 MiB file-size limit, EFBIG instead of ENOSPC
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 * MiB, 2 * MiB))


@pytest.fixture
def small_disk():
    root = Path(tempfile.mkdtemp(prefix="mgdata-full-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(root)], capture_output=True
    )
    yield root, mounted.returncode == 0
    if mounted.returncode == 0:
        subprocess.run(["umount", str(root)], check=True)
    shutil.rmtree(root)


def test_full_disk_fails_clearly_and_leaves_nothing_corrupt(small_disk):
    root, tmpfs = small_disk
    store_root = root / "store"
    child = subprocess.run(
        [sys.executable, "-c", FILL, str(store_root)],
        capture_output=True, text=True, timeout=60, preexec_fn=None if tmpfs else _limit_file_size,
    )  # fmt: skip
    assert child.returncode == 3, child.stderr
    reason = "No space left on device" if tmpfs else "File too large"
    assert child.stdout.strip() == f"cannot write {store_root.as_uri()}/raw/big.zip: {reason}"
    store = LocalStore(store_root)
    assert store.stat("raw/big.zip") is None  # no partial object under its key
    assert store.read_bytes("data/small.jpg") == b"s" * 1000  # what was there is intact
    assert list((store_root / LocalStore.TMP_DIR).iterdir()) == []  # the temp file is gone
    store.delete("data/small.jpg")
    store.put_bytes("data/after.jpg", b"ok")  # and the store works again once there is room
    assert store.read_bytes("data/after.jpg") == b"ok"


def test_s3_put_to_an_endpoint_that_is_down_names_the_store_and_hides_the_signed_url():
    """put_bytes sends a presigned URL (it carries a signature): a connection error must not repeat it."""
    from botocore.config import Config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    client = s3_client(
        endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="k", aws_secret_access_key=SECRET,
        region_name="us-east-1", config=Config(retries={"mode": "standard", "max_attempts": 1}),
    )  # fmt: skip
    with pytest.raises(StoreError) as err:
        S3Store("down", "p", client).put_bytes("data/a.jpg", b"x")
    msg = str(err.value)
    assert msg.startswith("PutObject s3://down/p/data/a.jpg failed: EndpointConnectionError")
    for secret in (SECRET, "Signature", "X-Amz-Credential"):
        assert secret not in msg and secret not in repr(err.value.__cause__) + repr(err.value.__context__)
