"""The rehearsal mirror's shape at a tiny scale: real file counts x scale, real archive layouts, distinct tiny images,
the broken ones broken, training JSONs at the real sample counts x scale, the scaled shard size in the catalog."""

from __future__ import annotations

import hashlib
import json
import tarfile
import zipfile

import pytest
import yaml

from offline_mirror import rehearsal
from offline_mirror.build import load_replicas
from offline_mirror.media import decoded_format

SCALE = 0.0005  # at least 8 files per archive; 1,050 files in all


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    root = tmp_path_factory.mktemp("rehearsal")
    return root, rehearsal.build_rehearsal(root, SCALE)


def test_every_archive_holds_its_real_count_times_scale_in_its_real_shape(mirror):
    root, replicas = mirror
    by_name = {(r.source, r.name): r for r in replicas}
    for a in rehearsal.ARCHIVES:
        if a.serve in ("covers", "inbox"):
            continue
        r = by_name[(a.source, a.file)]
        assert r.images + r.broken == rehearsal.scaled(a.count, SCALE), a
        assert r.broken >= 3
    allava = [r for r in replicas if r.source == "allava_laion" and r.name.endswith(".zip")]
    assert sorted(r.name for r in allava) == [f"images_{k}.zip" for k in range(10)]

    with zipfile.ZipFile(root / by_name[("llava_pretrain", "images.zip")].relpath) as z:
        files = [n for n in z.namelist() if not n.endswith("/")]
    assert all(n.split("/")[0].isdigit() and len(n.split("/")) == 2 for n in files)  # no root folder
    for name in ("share_textvqa", "web_celebrity", "web_landmark", "wikiart"):
        r = next(r for r in replicas if r.source == name)
        with zipfile.ZipFile(root / r.relpath) as z:
            folder = name.replace("_", "-") if name.startswith("web") else name
            files = [n for n in z.namelist() if not n.endswith("/")]
            assert files and all(n.startswith(f"data/{folder}/images/") for n in files)
    dvqa = by_name[("dvqa", "images.tar.gz")]
    with tarfile.open(root / dvqa.relpath) as t:
        names = [m.name for m in t.getmembers() if m.isfile()]
    assert len(names) == dvqa.images + dvqa.broken and all(n.startswith("images/bar_train_") for n in names)
    docvqa = rehearsal.load_record(root)["docvqa"]
    with tarfile.open(root / docvqa["relpath"]) as t:
        names = t.getnames()
    pngs = [n for n in names if n.startswith("train/documents/") and n.endswith(".png")]
    assert len(pngs) == rehearsal.scaled(10_194, SCALE) and "train/train_v1.0.json" in names
    covers = json.loads((root / "web_replicas.json").read_text())["covers"]
    assert len(covers) == rehearsal.scaled(207_572, SCALE)


def test_members_are_distinct_tiny_images_and_the_broken_ones_do_not_decode(mirror):
    root, replicas = mirror
    r = next(r for r in replicas if r.source == "coco")
    broken = set(r.broken_members)
    digests = set()
    with zipfile.ZipFile(root / r.relpath) as z:
        members = [i for i in z.infolist() if not i.is_dir()]
        for info in members:
            data = z.read(info)
            digests.add(hashlib.sha256(data).hexdigest())
            assert (decoded_format(data) is not None) != (info.filename in broken), info.filename
            assert len(data) < 64 * 1024
    assert len(digests) == len(members)


def test_training_jsons_have_the_real_sample_counts_times_scale(mirror):
    root, replicas = mirror
    hub = json.loads((root / "hub.json").read_text())
    files = {p: b for repo in hub.values() for c in repo["commits"].values() for p, b in c["files"].items()}
    for name, real in (("pretrain_blip_allava_1266k.json", 1_266_000), ("instruct_llava_allava_doc_dvqa_share_ai2d_1383k.json", 1_383_000)):  # fmt: skip
        samples = json.loads((root / files[f"train_json/{name}"]["blob"]).read_text())
        assert abs(len(samples) - real * SCALE) <= 8, (name, len(samples))
        boxes = json.loads((root / files[f"bbox_json/train/{name[:-5]}_only_box.json"]["blob"]).read_text())
        assert {str(s["id"]) for s in samples if "image" in s} == {str(b["id"]) for b in boxes}


def test_the_catalog_carries_the_scaled_shard_size(mirror, tmp_path):
    root, _ = mirror
    path = rehearsal.write_catalog(root, "http://127.0.0.1:9", load_replicas(root), out=tmp_path / "c.yaml")
    raw = yaml.safe_load(path.read_text())
    assert raw["defaults"]["shard_bytes"] == rehearsal.shard_bytes(SCALE)
    assert raw["sources"]["docvqa"]["expected_images"] == rehearsal.load_record(root)["docvqa"]["images"]
