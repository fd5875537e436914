"""Tests for offline_mirror.build and its CLI: the generated offline mirror and the catalog pointing at it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import statistics
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from io import BytesIO
from pathlib import Path

import pytest
import yaml
from PIL import Image

from mgdata.catalog import SHIPPED_CATALOG, load_catalog
from mgdata.images import check_image
from offline_mirror.__main__ import main as cli_main
from offline_mirror.build import (
    DEAD_MIRROR_SOURCE,
    REPLICATED_SOURCES,
    ReplicaFile,
    build_mirror,
    load_replicas,
    relpath_for_url,
    write_catalog,
)
from offline_mirror.media import decoded_format

IMAGES = 20
BASE_URL = "http://127.0.0.1:8765"

# The real archives' layouts (shared/reference/sources.md), written down independently of the catalog's rules.
ROOTS = {
    "coco": "train2017/",
    "gqa": "images/",
    "textvqa": "train_images/",
    "vg_part1": "VG_100K/",
    "vg_part2": "VG_100K_2/",
    "ai2d": "ai2d/images/",
}
NAME_PATTERNS = {
    "coco": r"\d{12}\.jpg",
    "gqa": r"[1-9]\d*\.jpg",
    "textvqa": r"[0-9a-f]{16}\.jpg",
    "vg_part1": r"[1-9]\d*\.jpg",
    "vg_part2": r"[1-9]\d*\.jpg",
    "ai2d": r"\d+\.png",
}


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[ReplicaFile]]:
    root = tmp_path_factory.mktemp("mirror")
    # The plain-HTTP replicas; the Hub's are tested in tests/unit/test_hub_replicas.py.
    return root, build_mirror(root, images_per_source=IMAGES, sources=list(ROOTS))


def _zip(root: Path, replica: ReplicaFile) -> zipfile.ZipFile:
    return zipfile.ZipFile(root / replica.relpath)


def _image_members(replica: ReplicaFile, archive: zipfile.ZipFile) -> list[str]:
    root = ROOTS[replica.source]
    return [n for n in archive.namelist() if n.startswith(root) and n != root and "/" not in n[len(root) :]]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the replicas -------------------------------------------------------------------------------------------------


def test_replicates_the_plain_http_sources_with_the_recorded_counts(mirror):
    root, replicas = mirror
    assert [r.source for r in replicas] == list(ROOTS)
    assert set(REPLICATED_SOURCES) >= set(ROOTS)
    for r in replicas:
        assert (r.images, r.broken, r.normalized) == (IMAGES, 3, 1), r.source
        assert len(r.broken_members) == r.broken and len(r.normalized_members) == r.normalized
    assert load_replicas(root) == replicas
    records = json.loads((root / "replicas.json").read_text())
    assert [rec["sha256"] for rec in records] == [r.sha256 for r in replicas]


def test_every_replica_file_has_the_recorded_size_and_sha256(mirror):
    root, replicas = mirror
    for r in replicas:
        path = root / r.relpath
        assert path.stat().st_size == r.size
        assert _sha256(path) == r.sha256


def test_relpaths_are_the_first_mirror_urls_host_and_path(mirror):
    _, replicas = mirror
    shipped = load_catalog(SHIPPED_CATALOG)
    by_source = {r.source: r for r in replicas}
    assert by_source["coco"].relpath == "images.cocodataset.org/zips/train2017.zip"
    assert by_source["vg_part1"].relpath == "cs.stanford.edu/people/rak248/VG_100K_2/images.zip"
    assert by_source["vg_part2"].relpath == "cs.stanford.edu/people/rak248/VG_100K_2/images2.zip"
    for r in replicas:
        (remote,) = [f for f in shipped.sources[r.source].files if f.name == r.name]
        assert r.relpath == relpath_for_url(remote.mirrors[0].url)


def test_members_follow_the_real_layouts(mirror):
    root, replicas = mirror
    for r in replicas:
        with _zip(root, r) as archive:
            names = archive.namelist()
            images = _image_members(r, archive)
        assert len(images) == r.images + r.broken, r.source
        for name in images:
            assert re.fullmatch(NAME_PATTERNS[r.source], name.rsplit("/", 1)[1]), name
        junk = [n for n in names if n.startswith("__MACOSX/")]
        if r.source == "ai2d":
            assert {
                "ai2d/",
                "ai2d/images/",
                "ai2d/annotations/",
                "ai2d/questions/",
                "ai2d/categories.json",
            } <= set(names)
            assert (
                sum(n.startswith("ai2d/annotations/") and n.endswith(".png.json") for n in names)
                == IMAGES - 1
            )
            assert (
                sum(n.startswith("ai2d/questions/") and n.endswith(".png.json") for n in names) == IMAGES - 1
            )
        elif r.source == "gqa":
            assert any(n.startswith("__MACOSX/images/._") for n in junk)
            assert all(n.startswith(("images/", "__MACOSX/")) for n in names)
        else:
            assert not junk
            assert all(n.startswith(ROOTS[r.source]) for n in names), r.source


def test_coco_members_carry_zip64_extra_fields(mirror):
    root, replicas = mirror
    (coco,) = [r for r in replicas if r.source == "coco"]
    raw = (root / coco.relpath).read_bytes()
    with _zip(root, coco) as archive:
        files = [i for i in archive.infolist() if not i.is_dir()]
        assert files
        for info in files:
            header = raw[info.header_offset : info.header_offset + 30]
            assert header[:4] == b"PK\x03\x04"
            compressed, uncompressed, name_len, extra_len = struct.unpack("<II HH", header[18:30])
            assert (compressed, uncompressed) == (0xFFFFFFFF, 0xFFFFFFFF), info.filename
            extra = raw[info.header_offset + 30 + name_len : info.header_offset + 30 + name_len + extra_len]
            assert struct.unpack("<H", extra[:2])[0] == 0x0001, (
                info.filename
            )  # the Zip64 extended information
        assert archive.testzip() is None


def test_good_members_decode_and_broken_ones_do_not(mirror):
    root, replicas = mirror
    for r in replicas:
        expected_format = "PNG" if r.source == "ai2d" else "JPEG"
        with _zip(root, r) as archive:
            for name in _image_members(r, archive):
                data = archive.read(name)
                status = check_image(data, name).status
                if name in r.broken_members:
                    assert decoded_format(data) is None, name
                    assert status == "invalid", name
                elif name in r.normalized_members:
                    assert decoded_format(data) == "GIF", name
                    assert status == "normalized", name
                else:
                    assert decoded_format(data) == expected_format, name
                    assert status == "ok", name


def test_broken_members_are_the_realistic_kinds(mirror):
    root, replicas = mirror
    for r in replicas:
        with _zip(root, r) as archive:
            reasons = sorted(check_image(archive.read(n), n).error.split(":")[0] for n in r.broken_members)
        damaged = "corrupt image" if r.source == "ai2d" else "truncated image"
        assert reasons == sorted(["empty file", "not an image (HTML page)", damaged]), (r.source, reasons)


def test_images_are_distinct_and_of_realistic_size(mirror):
    root, replicas = mirror
    for r in replicas:
        with _zip(root, r) as archive:
            good = [n for n in _image_members(r, archive) if n not in r.broken_members + r.normalized_members]
            blobs = [archive.read(n) for n in good]
            dims = [Image.open(BytesIO(b)).size for b in blobs]
        assert len({hashlib.sha256(b).digest() for b in blobs}) == len(blobs), r.source
        assert 20_000 <= statistics.median(len(b) for b in blobs) <= 160_000, r.source
        assert all(240 <= min(d) and max(d) <= 800 for d in dims), (r.source, dims)


def test_same_seed_is_byte_identical_and_another_seed_differs(mirror, tmp_path):
    _, replicas = mirror
    again = build_mirror(tmp_path / "again", images_per_source=IMAGES, sources=list(ROOTS))
    assert [r.sha256 for r in again] == [r.sha256 for r in replicas]
    assert again == replicas
    other = build_mirror(tmp_path / "other", images_per_source=IMAGES, seed=1, sources=list(ROOTS))
    assert all(a.sha256 != b.sha256 for a, b in zip(other, replicas, strict=True))


def test_build_rejects_unknown_sources_and_too_few_images(tmp_path):
    with pytest.raises(ValueError, match="no_such_source"):
        build_mirror(tmp_path, images_per_source=2, sources=["no_such_source"])
    with pytest.raises(ValueError, match="at least 2"):
        build_mirror(tmp_path, images_per_source=1, sources=["coco"])


# --- the catalog --------------------------------------------------------------------------------------------------


def test_write_catalog_points_replicated_files_at_the_mirror(mirror, tmp_path):
    root, replicas = mirror
    out = write_catalog(root, BASE_URL + "/", replicas, shard_bytes=1 << 20, out=tmp_path / "catalog.yaml")
    assert out == tmp_path / "catalog.yaml"
    catalog = load_catalog(out)
    assert catalog.defaults.shard_bytes == 1 << 20
    for r in replicas:
        source = catalog.sources[r.source]
        (remote,) = [f for f in source.files if f.name == r.name]
        urls = [m.url for m in remote.mirrors]
        if r.source == DEAD_MIRROR_SOURCE:
            assert urls == [f"{BASE_URL}/dead/{r.relpath}", f"{BASE_URL}/{r.relpath}"]
        else:
            assert urls == [f"{BASE_URL}/{r.relpath}"]
        assert remote.size == r.size
        assert remote.checksums == {"sha256": r.sha256}
        assert source.expected_images == r.images


def test_write_catalog_leaves_other_sources_as_shipped(mirror):
    root, replicas = mirror
    out = write_catalog(root, BASE_URL, replicas)
    assert out == root / "catalog.yaml"
    catalog, shipped = load_catalog(out), load_catalog(SHIPPED_CATALOG)
    assert list(catalog.sources) == list(shipped.sources)
    assert catalog.defaults.shard_bytes == 4 * 1024 * 1024
    assert catalog.defaults.max_shards == shipped.defaults.max_shards
    for name in set(shipped.sources) - set(REPLICATED_SOURCES):
        assert catalog.sources[name] == shipped.sources[name], name
    assert "&id" not in out.read_text()  # the merge-key lists are written out, not as YAML aliases


def test_write_catalog_with_a_subset_keeps_the_rest_shipped(mirror, tmp_path):
    root, replicas = mirror
    (coco,) = [r for r in replicas if r.source == "coco"]
    catalog = load_catalog(write_catalog(root, BASE_URL, [coco], out=tmp_path / "c.yaml"))
    shipped = load_catalog(SHIPPED_CATALOG)
    assert catalog.sources["coco"].files[0].mirrors[0].url == f"{BASE_URL}/{coco.relpath}"
    assert catalog.sources["gqa"] == shipped.sources["gqa"]


def test_write_catalog_rejects_a_replica_the_catalog_does_not_know(mirror, tmp_path):
    root, replicas = mirror
    stray = ReplicaFile("coco", "val2017.zip", "x/val2017.zip", 10, "0" * 64, 1, 0, 0)
    with pytest.raises(ValueError, match="val2017.zip"):
        write_catalog(root, BASE_URL, [stray], out=tmp_path / "c.yaml")
    assert not (tmp_path / "c.yaml").exists()


def test_catalog_rules_map_exactly_the_replicas_image_members(mirror, tmp_path):
    root, replicas = mirror
    catalog = load_catalog(write_catalog(root, BASE_URL, replicas, out=tmp_path / "catalog.yaml"))
    for r in replicas:
        (remote,) = [f for f in catalog.sources[r.source].files if f.name == r.name]
        with _zip(root, r) as archive:
            names = archive.namelist()
            images = set(_image_members(r, archive))
        mapped = {n: remote.map_member(n) for n in names}
        for name in images:
            assert mapped[name] == f"{remote.target}/{name.rsplit('/', 1)[1]}", name
        for name in set(names) - images:
            assert mapped[name] is None, name  # directories, AI2D's JSON siblings, gqa's __MACOSX member
        assert len([t for t in mapped.values() if t]) == r.images + r.broken
        assert remote.target == catalog.sources[r.source].layout[0]
    ai2d = [r for r in replicas if r.source == "ai2d"][0]
    with _zip(root, ai2d) as archive:
        assert any(n.startswith("ai2d/annotations/") for n in archive.namelist())


# --- the command line ---------------------------------------------------------------------------------------------


def test_cli_build_prints_a_table(tmp_path, capsys):
    assert cli_main(["build", str(tmp_path), "--images", "3", "--sources", "coco,ai2d", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    assert "train2017.zip" in out and "ai2d-all.zip" in out and "gqa" not in out
    assert [r.source for r in load_replicas(tmp_path)] == ["coco", "ai2d"]


def test_cli_rejects_unknown_sources(tmp_path):
    with pytest.raises(SystemExit):
        cli_main(["build", str(tmp_path), "--sources", "coco,nope"])


def test_cli_serve_builds_writes_catalog_and_ready_file_then_stops_on_sigterm(tmp_path):
    root, ready, pidfile, catalog_out = (
        tmp_path / "m",
        tmp_path / "ready",
        tmp_path / "pid",
        tmp_path / "cat.yaml",
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "offline_mirror", "serve", str(root), "--images", "2", "--sources", "gqa"]
    cmd += [
        "--port",
        "0",
        "--ready-file",
        str(ready),
        "--pidfile",
        str(pidfile),
        "--catalog-out",
        str(catalog_out),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), proc.communicate(timeout=5)[0] if proc.poll() is not None else "no ready file"
        base_url = ready.read_text().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base_url) and not base_url.endswith(":0")
        assert pidfile.read_text().strip() == str(proc.pid)
        (replica,) = load_replicas(root)
        catalog = load_catalog(catalog_out)
        urls = [m.url for m in catalog.sources["gqa"].files[0].mirrors]
        assert urls[-1] == f"{base_url}/{replica.relpath}"
        with urllib.request.urlopen(urls[-1], timeout=10) as response:
            assert hashlib.sha256(response.read()).hexdigest() == replica.sha256
        with pytest.raises(urllib.error.HTTPError) as dead:
            urllib.request.urlopen(urls[0], timeout=10)
        assert dead.value.code == 404
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
        assert proc.returncode == 0, out
        assert "building the mirror first" in out
        assert not ready.exists() and not pidfile.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_catalog_yaml_is_plain_yaml(mirror, tmp_path):
    root, replicas = mirror
    text = write_catalog(root, BASE_URL, replicas, out=tmp_path / "c.yaml").read_text()
    assert text.startswith("# Generated by offline_mirror")
    assert yaml.safe_load(text)["sources"]["coco"]["files"][0]["checksums"] == {
        "sha256": [r for r in replicas if r.source == "coco"][0].sha256
    }
