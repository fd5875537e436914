"""A hostile archive through the whole pipeline (fetch → shard → extract → finalize): the unit tests
(tests/unit/test_archive.py, test_images.py) check each trap alone; this one checks what lands in the store when they
come together, that duplicate names resolve deterministically, and that nothing is written outside the store's
prefixes, let alone outside the store."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import time
import zipfile
from pathlib import Path

import pytest
import yaml
from odd_sources import png
from PIL import Image

from mgdata import manifest
from mgdata.ingest import Run, ingest_source
from mgdata.settings import Settings
from mgdata.storage import LocalStore

pytestmark = pytest.mark.usefixtures("shard_workers")  # every case on threads and on forked workers

SOURCE = "ai2d"
PREFIX = "ai2d/images/"
STORE_PREFIXES = {"raw", "data", "quarantine", "manifests", "state", "runs", "work"}


def jpeg_with_exif(exif: bytes) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(buf, "JPEG", exif=exif)
    return buf.getvalue()


def animated_gif() -> bytes:
    frames = [Image.new("P", (20, 20), i) for i in (1, 50, 100)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)
    return buf.getvalue()


def nested_zip_bomb() -> bytes:
    """A zip inside a zip, the inner one a deflate bomb of 20 MiB of zeros."""
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.png", b"\0" * (20 * 1024 * 1024))
    return inner.getvalue()


def unix_member(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = mode << 16
    return info


class Cp437Member(zipfile.ZipInfo):
    """A member whose name is stored as non-UTF-8 bytes without the UTF-8 flag: readers decode it as cp437
    (zipfile itself would write any non-ASCII name as flagged UTF-8)."""

    __slots__ = ("raw_name",)

    def __init__(self, raw_name: bytes):
        super().__init__(raw_name.decode("cp437"))
        self.raw_name = raw_name

    def _encodeFilenameFlags(self):  # noqa: N802 - zipfile's name
        return self.raw_name, self.flag_bits


FIRST, SECOND = png((255, 0, 0)), png((0, 0, 255))
EXIF_BIG = (
    b"Exif\0\0"
    + b"MM\0*\0\0\0\x08"
    + b"\0\x01"
    + b"\x01\x0e\0\x02\xff\xff\xff\xf0\0\0\0\x1a"
    + os.urandom(60_000)
)


def hostile_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(PREFIX + "good.png", png((1, 2, 3)))
        zf.writestr(PREFIX + "dup.png", FIRST)  # a duplicate name: the later entry must win, every time
        zf.writestr(PREFIX + "../../../escape.png", png((9, 9, 9)))
        zf.writestr("../../escape2.png", png((9, 9, 9)))
        zf.writestr("/abs/escape3.png", png((9, 9, 9)))
        zf.writestr(unix_member(PREFIX + "link.png", stat.S_IFLNK | 0o777), "/etc/passwd")
        zf.writestr(unix_member(PREFIX + "fifo.png", stat.S_IFIFO | 0o644), b"")
        zf.writestr(PREFIX + "nested.zip", nested_zip_bomb())
        zf.writestr(PREFIX + "nested-bomb.png", nested_zip_bomb())  # a zip named .png
        zf.writestr(Cp437Member(PREFIX.encode() + b"caf\x82.png"), png((4, 5, 6)))
        zf.writestr(PREFIX + "exif.jpg", jpeg_with_exif(EXIF_BIG))
        zf.writestr(PREFIX + "anim.gif", animated_gif())
        zf.writestr(PREFIX + "html.jpg", b"<!DOCTYPE html><html><body>Not found</body></html>")
        zf.writestr(PREFIX + "dup.png", SECOND)
    return buf.getvalue()


@pytest.fixture
def hostile_run(mirror, tmp_path):
    srv, catalog, _ = mirror
    data = hostile_zip()
    path = srv.root / "hostile" / f"{tmp_path.name}.zip"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    raw = yaml.safe_load(Path(catalog).read_text())
    entry = raw["sources"][SOURCE]["files"][0]
    entry.update(mirrors=[srv.url(f"hostile/{path.name}")], size=len(data))
    entry["checksums"] = {"sha256": hashlib.sha256(data).hexdigest()}
    out = tmp_path / "catalog.yaml"
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    top = tmp_path / "top"
    store = LocalStore(top / "store")
    return Run(Settings(storage=store.url, catalog=str(out)), "hostile"), store, top


@pytest.mark.filterwarnings("ignore:Duplicate name", "ignore:Tag data larger than file")
def test_hostile_archive_through_the_pipeline(hostile_run):
    run, store, top = hostile_run
    started = time.monotonic()
    assert ingest_source(run, SOURCE)["status"] == "ok"
    assert time.monotonic() - started < 60  # bombs are refused, not inflated

    rows = {r["path"]: r for r in manifest.read_table(store, manifest.source_key(SOURCE)).to_pylist()}
    data = sorted(o.key for o in store.list("data/"))
    assert data == [
        "data/ai2d/images/anim.gif",
        "data/ai2d/images/café.png",
        "data/ai2d/images/dup.png",
        "data/ai2d/images/exif.jpg",
        "data/ai2d/images/good.png",
    ]
    assert store.read_bytes("data/ai2d/images/dup.png") == SECOND  # the later of the two entries
    assert rows["ai2d/images/dup.png"]["sha256"] == hashlib.sha256(SECOND).hexdigest()
    assert rows["ai2d/images/exif.jpg"]["status"] == "ok"
    assert rows["ai2d/images/anim.gif"]["format"] == "GIF"
    for name, reason in [
        ("link.png", "symlink member"),
        ("fifo.png", "other member"),
        ("nested-bomb.png", ""),
        ("html.jpg", ""),
    ]:
        row = rows[f"ai2d/images/{name}"]
        assert row["status"] == "invalid" and reason in row["error"], row
    escaped = ("ai2d_images_.._.._.._escape.png", ".._.._escape2.png", "_abs_escape3.png")
    for name in escaped:  # recorded, never landed
        assert rows[f"ai2d/images/{name}"]["status"] == "invalid"
    assert "'..' component" in rows["ai2d/images/ai2d_images_.._.._.._escape.png"]["error"]
    assert not any("nested.zip" in p for p in rows)  # not an image: not taken

    # Nothing outside the store, nothing outside its prefixes, no escaped name anywhere.
    everything = [p.relative_to(top) for p in top.rglob("*") if not p.is_dir()]
    assert all(p.parts[0] == "store" and p.parts[1] in STORE_PREFIXES for p in everything), everything
    assert not [p for p in everything if "escape" in p.name and p.parts[1] != "raw"]
    assert not [p for p in everything if p.parts[1] == "data" and p.name in ("link.png", "fifo.png")]


@pytest.mark.filterwarnings("ignore:Duplicate name", "ignore:Tag data larger than file")
def test_duplicate_names_resolve_the_same_way_on_every_run(hostile_run):
    run, store, _ = hostile_run
    ingest_source(run, SOURCE)
    first = store.read_bytes("data/ai2d/images/dup.png")
    for i in range(3):  # re-extract: threads and shard order must not change the winner
        again = Run(run.settings, f"again{i}", force=True)
        ingest_source(again, SOURCE)
        assert store.read_bytes("data/ai2d/images/dup.png") == first == SECOND
