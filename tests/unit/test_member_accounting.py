"""No silent drops: every archive member ends as a manifest row or a counted, reasoned skip (mgdata.extract)."""

from __future__ import annotations

import io
import json
import zipfile

from PIL import Image

from mgdata import manifest
from mgdata.catalog import SHIPPED_CATALOG
from mgdata.extract import extract, shard_file, skipped_key
from mgdata.ingest import Run
from mgdata.settings import Settings
from mgdata.storage import LocalStore


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, "JPEG")
    return buf.getvalue()


def test_zip_members_are_rows_or_reasoned_skips_and_extensions_match_in_any_case(tmp_path):
    members = {
        "train2017/": None,
        "train2017/000000000009.jpg": jpeg(),
        "train2017/000000000025.JPG": jpeg(),
        "train2017/000000000030.Jpeg": jpeg(),
        "train2017/000000000034.jfif": jpeg(),
        "train2017/000000000036.mpo": jpeg(),
        "train2017/.000000000042.jpg": jpeg(),
        "__MACOSX/train2017/._000000000009.jpg": b"\x00\x05\x16\x07",
        "train2017/LICENSE.txt": b"CC BY 4.0",
        "val2017/000000000139.jpg": jpeg(),
    }
    store = LocalStore(tmp_path / "store")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("train2017/000000000009.jpg", b"an older copy, shadowed by the later one")
        for name, data in members.items():
            z.writestr(name, data or b"")
    store.put_bytes("raw/coco/train2017.zip", buf.getvalue())
    run = Run(Settings(storage=store.url, catalog=str(SHIPPED_CATALOG)), "r1")
    shards = shard_file(run, "coco", run.file("coco", "train2017.zip"))
    rows = [r for s in shards for r in [extract(run, "coco", s)]]
    assert sum(r["members"] for r in rows) == 5
    table = manifest.read_table(store, manifest.parts_prefix("coco", "train2017.zip") + "00000.parquet")
    assert sorted(p.rsplit("/", 1)[1] for p in table["path"].to_pylist()) == [
        "000000000009.jpg",
        "000000000025.JPG",
        "000000000030.Jpeg",
        "000000000034.jfif",
        "000000000036.mpo",
    ]
    record = json.loads(store.read_bytes(skipped_key("coco", "train2017.zip")))
    assert record["counts"] == {
        "directory": 1,
        "hidden file": 1,
        "macOS resource fork": 1,
        "not an image name": 1,
        "outside train2017/": 1,
        "shadowed by a later member of the same path": 1,
    }
    assert record["skipped"] + 5 == len(members) + 1
    assert record["first"]["outside train2017/"] == ["val2017/000000000139.jpg"]
    assert record["paths"] == {
        "coco/train2017/.000000000042.jpg": "hidden file",
        "coco/train2017/LICENSE.txt": "not an image name",
    }
