"""The Drive / URL-list replicas: the real layouts, the catalog's rules mapping them, determinism."""

from __future__ import annotations

import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from mgdata.catalog import load_catalog
from offline_mirror.build import WEB_SOURCES, build_mirror, write_catalog
from offline_mirror.web_replicas import WEB_JSON, WIKIART_ESCAPED, build_docvqa, cover_outcome

BASE = "http://127.0.0.1:8765"


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    replicas = build_mirror(root, images_per_source=16, sources=list(WEB_SOURCES))
    catalog = load_catalog(write_catalog(root, BASE, replicas))
    return root, replicas, catalog


def test_sharegpt4v_zips_hold_data_name_images_and_the_rules_strip_it(mirror):
    root, replicas, catalog = mirror
    for r in (r for r in replicas if r.name.endswith(".zip")):
        (f,) = catalog.sources[r.source].files
        names = zipfile.ZipFile(root / r.relpath).namelist()
        folder = f.target.split("/")[0]
        images = [n for n in names if not n.endswith("/")]
        assert all(n.startswith(f"data/{folder}/images/") for n in images)
        assert sorted(f.map_member(n) for n in images) == sorted(
            f"{folder}/images/{n.rsplit('/', 1)[1]}" for n in images
        )
        assert [m.kind for m in f.mirrors] == ["gdrive", "http"] and f.checksums == {"sha256": r.sha256}
    wikiart = next(r for r in replicas if r.source == "wikiart")
    members = zipfile.ZipFile(root / wikiart.relpath).namelist()
    assert {f"data/wikiart/images/{n}" for n in WIKIART_ESCAPED} <= set(members)


def test_dvqa_is_one_top_folder_of_flat_pngs(mirror):
    root, replicas, catalog = mirror
    r = next(r for r in replicas if r.source == "dvqa")
    (f,) = catalog.sources["dvqa"].files
    with tarfile.open(root / r.relpath) as tar:
        files = [m.name for m in tar.getmembers() if m.isfile()]
    assert all(n.startswith("images/bar_") and n.endswith(".png") for n in files)
    assert {f.map_member(n) for n in files} == {f"dvqa/images/{n.split('/')[1]}" for n in files}


def test_ocr_vqa_url_list_points_at_the_server_and_covers_every_behaviour(mirror):
    root, replicas, catalog = mirror
    r = next(r for r in replicas if r.source == "ocr_vqa")
    spec = json.loads((root / WEB_JSON).read_text())
    entries = json.loads((root / spec["url_list"]).read_text())
    assert all(e["imageURL"].startswith(f"{BASE}/ecx.images-amazon.com/images/I/") for e in entries.values())
    outcomes = [cover_outcome(c["behaviour"]) for c in spec["covers"].values()]
    assert (
        outcomes.count("missing") == 2
        and outcomes.count("invalid") == 2
        and outcomes.count("normalized") == 3
    )
    (listed, zipped) = catalog.sources["ocr_vqa"].files
    assert listed.archive == "urllist" and listed.mirrors[0].path == "dataset.json"
    assert catalog.sources["ocr_vqa"].expected_images == r.images == outcomes.count("ok") + 3
    assert zipped.mirrors[0].url.startswith(BASE) and zipped.checksums["sha256"]


def test_same_seed_same_bytes(mirror, tmp_path):
    root, replicas, _ = mirror
    again = build_mirror(tmp_path / "again", images_per_source=16, sources=list(WEB_SOURCES))
    assert [a.sha256 for a in again] == [r.sha256 for r in replicas]


def test_docvqa_train_tar_has_train_documents(tmp_path: Path):
    r = build_docvqa(tmp_path, images=4)
    with tarfile.open(tmp_path / r.relpath) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
    assert "train/train_v1.0.json" in names
    assert len([n for n in names if n.startswith("train/documents/") and n.endswith(".png")]) == r.images
