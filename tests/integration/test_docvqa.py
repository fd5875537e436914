"""DocVQA, the registration-only source: from the store's inbox, from an authenticated URL (an Airflow connection,
Basic auth against a loopback server), and skipped with the exact instructions when neither is there."""

from __future__ import annotations

import base64
import json
import logging

import pytest

from mgdata import manifest
from mgdata.catalog import SHIPPED_CATALOG
from mgdata.ingest import (
    Run,
    ingest_source,
    plan_source,
)
from mgdata.run import SourceSkipped
from mgdata.settings import Settings
from mgdata.storage import LocalStore
from offline_mirror.server import MirrorServer
from offline_mirror.web_replicas import build_docvqa

PASSWORD = "rrc-p4ssw0rd-never-logged"
CATALOG = str(SHIPPED_CATALOG)  # DocVQA as shipped: the inbox and the connection need no catalog change


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    root = tmp_path_factory.mktemp("docvqa-mirror")
    return root, build_docvqa(root, images=6)


def _assert_flattened(store: LocalStore, images: int) -> None:
    keys = sorted(o.key for o in store.list("data/"))
    assert len(keys) == images
    assert all(k.startswith("data/docvqa/images/") and k.endswith(".png") and k.count("/") == 3 for k in keys)
    table = manifest.read_table(store, manifest.source_key("docvqa"))
    assert manifest.counts(table)["ok"] == images and table.num_rows == images  # train_v1.0.json is not taken


def test_from_the_inbox(replica, tmp_path):
    root, r = replica
    store = LocalStore(tmp_path / "store")
    store.put_file("inbox/docvqa/train.tar.gz", root / r.relpath)
    run = Run(Settings(storage=store.url, catalog=CATALOG), "run1")
    summary = ingest_source(run, "docvqa")
    assert summary["status"] == "ok" and summary["files_fetched"] == 1 and summary["bytes_fetched"] == r.size
    _assert_flattened(store, r.images)
    fetched = json.loads(store.read_bytes("state/docvqa/files/train.tar.gz.json"))["fetch"]
    assert fetched["mirror"] == "inbox/docvqa/train.tar.gz" and fetched["sha256"] == r.sha256

    again = Run(run.settings, "run2")
    assert plan_source(again, "docvqa") == []  # the same inbox object: nothing to do


def test_from_an_authenticated_url(replica, tmp_path, monkeypatch, caplog):
    root, r = replica
    good = "Basic " + base64.b64encode(f"reader:{PASSWORD}".encode()).decode()

    def protected(handler, relpath, method):
        if handler.headers.get("Authorization") != good:
            handler._simple(401, method == "HEAD", {"WWW-Authenticate": 'Basic realm="RRC"'})
            return
        handler.send_path(root / r.relpath, head=method == "HEAD")

    with MirrorServer(root, routes=[("rrc/", protected)]) as server:
        url = f"{server.base_url}/rrc/DocVQA/train.tar.gz"
        conn = {"conn_type": "http", "host": url, "login": "reader", "password": PASSWORD}
        monkeypatch.setenv("AIRFLOW_CONN_MGDATA_DOCVQA", json.dumps(conn))
        store = LocalStore(tmp_path / "store")
        caplog.set_level(logging.DEBUG)
        run = Run(Settings(storage=store.url, catalog=CATALOG), "r1")
        summary = ingest_source(run, "docvqa")
        assert summary["status"] == "ok" and summary["bytes_fetched"] == r.size
        _assert_flattened(store, r.images)
        record = store.read_bytes("state/docvqa/files/train.tar.gz.json").decode()
        assert f"connection mgdata_docvqa: {url}" in record

        conn["password"] = "wrong-" + PASSWORD
        monkeypatch.setenv("AIRFLOW_CONN_MGDATA_DOCVQA", json.dumps(conn))
        bad = Run(Settings(storage=(tmp_path / "other").as_uri(), catalog=run.settings.catalog), "r2")
        from mgdata.fetch import FetchError

        with pytest.raises(FetchError, match="HTTP 401") as info:
            ingest_source(bad, "docvqa")
        assert PASSWORD not in str(info.value)
    everything = caplog.text + "".join(o.key for o in store.list("")) + record
    assert PASSWORD not in everything


def test_skipped_with_the_exact_instructions_when_nothing_is_provided(tmp_path, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_MGDATA_DOCVQA", raising=False)
    store = LocalStore(tmp_path / "store")
    store.put_bytes("inbox/docvqa/README.txt", b"not the archive")
    run = Run(Settings(storage=store.url, catalog=CATALOG), "r1")
    with pytest.raises(SourceSkipped) as info:
        plan_source(run, "docvqa")
    message = str(info.value)
    assert message.startswith(run.source("docvqa").manual_instructions)
    assert "inbox/docvqa/train.tar.gz" in message and "mgdata_docvqa" in message
    assert "inbox/docvqa/README.txt" in message
    assert store.stat("data/docvqa") is None


def test_every_member_is_a_row_or_a_counted_skip_and_a_skipped_training_path_says_so(tmp_path, monkeypatch):
    """An archive as users repack it (macOS forks, hidden files, upper-case and .jfif names, a readme): each member
    ends as a manifest row or a counted, reasoned skip with examples; a training path skipped is not 'missing'."""
    import io
    import tarfile

    from PIL import Image

    from mgdata.annotations import check_store
    from mgdata.catalog import load_catalog, parse_catalog

    def image(fmt: str) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (10, 120, 200)).save(buf, fmt)
        return buf.getvalue()

    members = {
        "train/": None,
        "train/documents/": None,
        "train/documents/a.png": image("PNG"),
        "train/documents/B.JPG": image("JPEG"),
        "train/documents/c.jfif": image("JPEG"),
        "train/documents/.d.png": image("PNG"),
        "__MACOSX/train/documents/._a.png": b"\x00\x05\x16\x07 AppleDouble",
        "train/documents/notes.txt": b"scanned at 300 dpi",
        "train/train_v1.0.json": b"{}",
    }
    archive = tmp_path / "train.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name.rstrip("/"))
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    monkeypatch.delenv("AIRFLOW_CONN_MGDATA_DOCVQA", raising=False)
    store = LocalStore(tmp_path / "store")
    store.put_file("inbox/docvqa/train.tar.gz", archive)
    run = Run(Settings(storage=store.url, catalog=CATALOG), "r1")
    assert ingest_source(run, "docvqa")["status"] == "ok"

    rows = manifest.read_table(store, manifest.source_key("docvqa")).to_pylist()
    assert sorted(r["path"] for r in rows) == [
        "docvqa/images/B.JPG",
        "docvqa/images/a.png",
        "docvqa/images/c.jfif",
    ]
    assert {r["status"] for r in rows} == {"ok"}
    record = json.loads(store.read_bytes("state/docvqa/skipped/train.tar.gz.json"))
    assert record["counts"] == {
        "directory": 2,
        "hidden file": 1,
        "macOS resource fork": 1,
        "not an image name": 1,
        "outside train/documents/": 1,
    }
    assert len(rows) + record["skipped"] == len(members)
    assert record["first"]["not an image name"] == ["train/documents/notes.txt"]

    raw = json.loads(json.dumps(load_catalog(SHIPPED_CATALOG).model_dump(by_alias=True)))
    raw["training"] = [{"json": "annotations/t.json"}]
    cited = ["docvqa/images/a.png", "docvqa/images/B.JPG", "docvqa/images/c.jfif", "docvqa/images/.d.png"]
    conversation = [{"from": "human", "value": "<image>\nDate?"}, {"from": "gpt", "value": "1998"}]
    samples = [{"id": str(i), "image": p, "conversations": conversation} for i, p in enumerate(cited)]
    store.put_bytes("annotations/t.json", json.dumps(samples).encode())
    report = check_store(store, parse_catalog(raw))
    assert (report["present"], report["missing"], report["skipped"]) == (3, 0, 1)
    assert report["findings"]["image_skipped"]["first"] == ["docvqa/images/.d.png"]
    assert report["skipped_at_extraction"] == {"docvqa/images/.d.png": "hidden file"}
    assert report["skipped_members"]["docvqa"]["hidden file"] == {
        "count": 1,
        "first": ["train/documents/.d.png"],
    }
    assert "1 image references whose archive member was skipped at extraction" in report["note"]
