"""The Hub replicas (offline_mirror.hub): the real archive shapes, LLaVA-format JSONs, deterministic builds, and the
catalog pointing the Hub mirrors at the stand-in."""

from __future__ import annotations

import json
import zipfile

import pytest

from mgdata.catalog import SHIPPED_CATALOG, load_catalog
from offline_mirror.build import build_mirror, write_catalog
from offline_mirror.hub import HUB_SOURCES, HubStandIn

IMAGES = 10


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    return root, build_mirror(root, images_per_source=IMAGES, sources=["gqa", *HUB_SOURCES])


def _names(root, replicas, source, name):
    (r,) = [r for r in replicas if r.source == source and r.name == name]
    with zipfile.ZipFile(root / r.relpath) as z:
        return [n for n in z.namelist() if not n.endswith("/")]


def test_archive_shapes_follow_the_real_ones(built):
    root, replicas = built
    pretrain = _names(root, replicas, "llava_pretrain", "images.zip")
    assert len(pretrain) == IMAGES + 1 and all(len(n.split("/")) == 2 for n in pretrain)  # no root folder
    assert all(n.split("/")[1][:5] == n.split("/")[0] and len(n.split("/")[1]) == 13 for n in pretrain)
    chunks = [r for r in replicas if r.source == "allava_laion"]
    assert [r.name for r in chunks] == [f"images_{i}.zip" for i in range(10)]
    for r in chunks:
        names = _names(root, replicas, "allava_laion", r.name)
        assert names and all(n.count("/") == 1 and n.endswith(".jpeg") for n in names)  # folders to flatten
    vflan = _names(root, replicas, "allava_vflan", "image_191-task_1k.zip")
    assert len(vflan) == IMAGES and all(n.startswith("images_191task_1k/") for n in vflan)


def test_training_json_cites_every_replicated_source_and_boxes_cover_its_ids(built):
    root, replicas = built
    by_name = {r.name: r for r in replicas if r.source == "mgllava_annotations"}
    instruct = json.loads(
        (root / by_name["instruct_llava_allava_doc_dvqa_share_ai2d_1383k.json"].relpath).read_text()
    )
    pretrain = json.loads((root / by_name["pretrain_blip_allava_1266k.json"].relpath).read_text())
    prefixes = {s["image"].split("/")[0] for s in instruct + pretrain if "image" in s}
    # docvqa: the stand-in archive a registered user downloads (for the demo's inbox step), cited like the rest
    assert prefixes == {"gqa", "allava_laion", "allava_vflan", "LLaVA-Pretrain", "docvqa"}
    assert all(set(s) <= {"id", "image", "conversations"} for s in instruct)
    boxes = json.loads(
        (root / by_name["instruct_llava_allava_doc_dvqa_share_ai2d_1383k_only_box.json"].relpath).read_text()
    )
    assert {b["id"] for b in boxes} == {s["id"] for s in instruct if "image" in s}
    assert all(len(b["boxes"]) == len(b["scores"]) == len(b["labels"]) for b in boxes)


def test_commits_start_with_the_catalogs_short_hashes_and_builds_are_deterministic(built, tmp_path):
    root, replicas = built
    hub = HubStandIn(root)
    assert hub.resolve_revision("datasets/liuhaotian/LLaVA-Pretrain", "70f9d1e").startswith("70f9d1e")
    assert hub.resolve_revision("models/PhoenixZ/MG-LLaVA", "8e00993") is not None
    assert hub.resolve_revision("datasets/Vision-Flan/vision-flan_191-task_1k", "24ba719").startswith(
        "24ba719"
    )
    assert hub.resolve_revision("datasets/liuhaotian/LLaVA-Pretrain", "0000000") is None
    again = build_mirror(tmp_path, images_per_source=IMAGES, sources=["gqa", *HUB_SOURCES])
    assert again == replicas
    assert HubStandIn(tmp_path).repos == hub.repos


def test_write_catalog_points_hub_mirrors_at_the_stand_in_and_pins_nothing(built, tmp_path):
    root, replicas = built
    catalog = load_catalog(write_catalog(root, "http://127.0.0.1:9", replicas, out=tmp_path / "c.yaml"))
    shipped = load_catalog(SHIPPED_CATALOG)
    for source in HUB_SOURCES:
        for f, s in zip(catalog.sources[source].files, shipped.sources[source].files, strict=True):
            assert [m.endpoint for m in f.mirrors] == ["http://127.0.0.1:9"]
            assert [m.model_copy(update={"endpoint": None}) for m in f.mirrors] == s.mirrors
            assert (f.size, f.checksums) == (None, {})  # the Hub's metadata gives them
    assert catalog.sources["allava_laion"].expected_images == 10
    assert catalog.sources["mgllava_annotations"].expected_images is None
