"""Archives made by the tests, served by the reliability mirror, and a catalog whose only source (`ai2d`) ingests
them; plus the S3 bucket and store snapshots the transaction tests share."""

from __future__ import annotations

import hashlib
import io
import tarfile
import uuid
import zipfile
from pathlib import Path

import yaml
from PIL import Image

from mgdata import manifest
from mgdata.storage import S3Store, s3_client

SOURCE = "ai2d"
PREFIX = "ai2d/images/"


def png(color: tuple[int, int, int], size=(24, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def noise_png(side: int) -> bytes:
    """A PNG that takes a while to decode (random pixels do not compress)."""
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), hashlib.shake_256(b"noise").digest(side * side * 3)).save(
        buf, "PNG", compress_level=1
    )
    return buf.getvalue()


def zip_of(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def tar_of(members: list[tuple[str, bytes]]) -> bytes:
    """A GNU tar; a name may hold lone surrogates, written as the raw (non-UTF-8) bytes they stand for."""
    buf = io.BytesIO()
    with tarfile.open(
        fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape"
    ) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def publish(mirror, folder: Path, files: list[tuple[str, bytes]]) -> str:
    """Serve `files` ([(file name, bytes)], kind from the extension) from the mirror; write a catalog under
    `folder` whose source `ai2d` has exactly these files, and return its path."""
    srv, catalog, _ = mirror
    raw = yaml.safe_load(Path(catalog).read_text())
    src = raw["sources"][SOURCE]
    template = src["files"][0]
    where = f"odd/{uuid.uuid4().hex[:12]}"
    (srv.root / where).mkdir(parents=True)
    entries = []
    for name, data in files:
        (srv.root / where / name).write_bytes(data)
        entry = dict(template, name=name, mirrors=[srv.url(f"{where}/{name}")], size=len(data))
        entry["archive"] = "tar" if name.endswith(".tar") else "zip"
        entry["checksums"] = {"sha256": hashlib.sha256(data).hexdigest()}
        entries.append(entry)
    src["files"] = entries
    src["expected_images"] = None
    raw["sources"] = {SOURCE: src}
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"catalog-{uuid.uuid4().hex[:8]}.yaml"
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(out)


def s3_bucket(moto_endpoint: str):
    """(client, bucket): a fresh bucket on the session's moto server."""
    client = s3_client(
        endpoint_url=moto_endpoint, aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1"
    )
    bucket = f"odd-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


def s3_store(moto_endpoint: str, cls=S3Store) -> S3Store:
    client, bucket = s3_bucket(moto_endpoint)
    return cls(bucket, "store", client)


S3_ENV = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1"}


def rows(store) -> dict[str, dict]:
    return {r["path"]: r for r in manifest.read_table(store, manifest.source_key(SOURCE)).to_pylist()}


def snapshot(store) -> dict:
    """What a finished run leaves that must not depend on faults: data/ and quarantine/ objects with their bytes'
    sha256, and the manifest."""
    objects = {
        o.key: hashlib.sha256(store.read_bytes(o.key)).hexdigest()
        for prefix in ("data/", "quarantine/")
        for o in store.list(prefix)
    }
    return {"objects": objects, "manifest": sorted(rows(store).items())}


def set_shard_workers(monkeypatch, forked: bool) -> None:
    """Zip shards on one process's threads, or cut among 3 forked worker processes of one thread each however small
    they are (`extract.worker_parts`), whatever this machine's cores."""
    from mgdata import extract

    if forked:
        monkeypatch.setattr(extract, "FORK_MIN_BYTES", 1)
        monkeypatch.setenv("MGDATA_EXTRACT_PROCESSES", "3")
        monkeypatch.setenv("MGDATA_EXTRACT_THREADS", "3")
    else:
        monkeypatch.setenv("MGDATA_EXTRACT_PROCESSES", "1")
