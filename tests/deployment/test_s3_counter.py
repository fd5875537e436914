"""The counting S3 proxy the deployment test measures with: boto3 calls through it to a real `moto_server` process
reach the store unchanged and are counted as the S3 operations they are, with their body bytes."""

from __future__ import annotations

import pytest
from processes import free_port
from s3_counter import S3Counter, moto_server

from mgdata.storage import open_store, s3_client

BUCKET = "counted"


@pytest.fixture(scope="module")
def proxied():
    port = free_port()
    server = moto_server(port)
    counter = S3Counter(f"http://127.0.0.1:{port}", area_prefix=f"/{BUCKET}/", server_pid=server.pid).start()
    client = s3_client(
        endpoint_url=counter.endpoint,
        aws_access_key_id="counter",
        aws_secret_access_key="counter",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    yield counter, client
    counter.stop()
    server.terminate()
    server.wait()


def test_each_s3_operation_is_counted_as_its_verb(proxied):
    counter, client = proxied
    before = counter.snapshot()
    client.put_object(Bucket=BUCKET, Key="data/a.jpg", Body=b"x" * 1000)
    assert client.get_object(Bucket=BUCKET, Key="data/a.jpg")["Body"].read() == b"x" * 1000
    client.head_object(Bucket=BUCKET, Key="data/a.jpg")
    client.list_objects_v2(Bucket=BUCKET, Prefix="data/")
    client.copy_object(Bucket=BUCKET, Key="raw/b.jpg", CopySource={"Bucket": BUCKET, "Key": "data/a.jpg"})
    upload = client.create_multipart_upload(Bucket=BUCKET, Key="raw/big")["UploadId"]
    part = client.upload_part(Bucket=BUCKET, Key="raw/big", UploadId=upload, PartNumber=1, Body=b"p" * 500)
    client.complete_multipart_upload(
        Bucket=BUCKET,
        Key="raw/big",
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    dropped = client.create_multipart_upload(Bucket=BUCKET, Key="raw/dropped")["UploadId"]
    client.abort_multipart_upload(Bucket=BUCKET, Key="raw/dropped", UploadId=dropped)
    assert client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    client.delete_object(Bucket=BUCKET, Key="raw/b.jpg")
    client.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": "raw/big"}]})
    seen = counter.snapshot() - before

    assert dict(seen.verbs) == {
        "PUT": 1,
        "GET": 1,
        "HEAD": 1,
        "LIST": 2,
        "COPY": 1,
        "MPU_CREATE": 2,
        "MPU_PART": 1,
        "MPU_COMPLETE": 1,
        "MPU_ABORT": 1,
        "DELETE": 2,
    }
    assert dict(seen.written) == {"data": 1, "raw": 3}
    assert seen.areas["LIST", "data"] == 1 and seen.areas["LIST", ""] == 1  # objects under data/, uploads
    assert seen.bytes_in >= 1500  # the PutObject's and the part's bodies, plus the XML of Complete and Delete
    assert seen.bytes_out >= 1000  # the GetObject's body, plus the XML answers


def test_the_store_reads_back_what_it_wrote_through_the_proxy(proxied):
    """Presigned PUTs, ranged reads and large bodies pass unchanged."""
    counter, client = proxied
    store = open_store(f"s3://{BUCKET}/store", client=client)
    blob = bytes(range(256)) * 4096  # 1 MiB
    before = counter.snapshot()
    store.put_bytes("data/blob.bin", blob)
    with store.open_range("data/blob.bin") as body:
        assert body.read() == blob
    seen = counter.snapshot() - before
    assert seen.verbs["PUT"] == 1 and seen.bytes_in >= len(blob) and seen.bytes_out >= len(blob)
    assert store.read_bytes("data/blob.bin") == blob


def test_counts_carry_what_the_store_cost_this_machine_in_cpu(proxied):
    """The server process's CPU and the proxy's request threads' CPU between two snapshots: what a phase's requests
    cost the machine's cores, which an S3 endpoint elsewhere would not."""
    counter, client = proxied
    before = counter.snapshot()
    for i in range(60):
        client.put_object(Bucket=BUCKET, Key=f"data/cpu/{i}.bin", Body=b"y" * 4096)
        client.get_object(Bucket=BUCKET, Key=f"data/cpu/{i}.bin")["Body"].read()
    seen = counter.snapshot() - before
    assert seen.requests == 120
    assert seen.server_cpu > 0  # moto_server's own process, read from /proc at each snapshot
    assert seen.proxy_cpu > 0
    idle = counter.snapshot() - counter.snapshot()
    assert idle.proxy_cpu == 0 and idle.requests == 0


def test_refuse_takes_the_endpoint_away_then_serves_on_the_same_port(proxied):
    """An S3 outage as the rehearsal injects it: new connections are refused, an open keep-alive connection is
    closed unanswered, and afterwards the same endpoint answers again."""
    import socket
    import threading
    import time

    from botocore.config import Config

    counter, client = proxied
    endpoint = counter.endpoint
    client.put_object(Bucket=BUCKET, Key="data/up.txt", Body=b"up")  # opens a keep-alive connection
    # made before the outage: building a client can take longer than the outage on a loaded machine
    impatient = s3_client(
        endpoint_url=endpoint,
        aws_access_key_id="counter",
        aws_secret_access_key="counter",
        region_name="us-east-1",
        config=Config(retries={"mode": "standard", "max_attempts": 1}),
    )
    outage = threading.Thread(target=counter.refuse, args=(3.0,))
    outage.start()
    host, port = endpoint.removeprefix("http://").split(":")
    refused, deadline = False, time.monotonic() + 2.0  # the listener closes once its serve loop has stopped
    while not refused and time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            time.sleep(0.05)
        except ConnectionResetError:  # queued on the listener as it closed: the next attempt finds it gone
            time.sleep(0.05)
        except ConnectionRefusedError:
            refused = True
    assert refused, "new connections were still accepted 2 s into the outage"
    with pytest.raises(Exception, match="(?i)connect"):
        impatient.get_object(Bucket=BUCKET, Key="data/up.txt")
    before = counter.snapshot()
    # the patient client (8 attempts, botocore's backoff) rides the outage out on the connection it had
    assert client.get_object(Bucket=BUCKET, Key="data/up.txt")["Body"].read() == b"up"
    outage.join()
    assert counter.endpoint == endpoint
    assert (counter.snapshot() - before).verbs["GET"] == 1
    assert counter.snapshot().refused >= 1
