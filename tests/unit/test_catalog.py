"""The shipped catalog validates, and a bad entry gives an error that names the source and the field."""

from __future__ import annotations

import copy

import pytest
import yaml

from mgdata.catalog import SHIPPED_CATALOG, CatalogError, load_catalog, parse_catalog

LAYOUT = {
    "LLaVA-Pretrain/images",
    "allava_laion/images",
    "allava_vflan/images",
    "coco/train2017",
    "ai2d/images",
    "docvqa/images",
    "dvqa/images",
    "gqa/images",
    "ocr_vqa/images",
    "share_textvqa/images",
    "textvqa/train_images",
    "vg/VG_100K",
    "vg/VG_100K_2",
    "web-celebrity/images",
    "web-landmark/images",
    "wikiart/images",
}


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load(SHIPPED_CATALOG.read_text())


def test_shipped_catalog_covers_the_whole_data_layout():
    catalog = load_catalog(SHIPPED_CATALOG)
    provided = {p for s in catalog.sources.values() for p in s.layout}
    assert provided == LAYOUT | {"sam/images"}  # ShareGPT4V's SAM images (sam_sft, off unless a recipe asks)
    assert "mgllava_annotations" in catalog.sources


def test_shipped_catalog_holds_real_upstream_urls_and_checksums():
    catalog = load_catalog(SHIPPED_CATALOG)
    coco = catalog.sources["coco"].files[0]
    assert coco.mirrors[0].url == "http://images.cocodataset.org/zips/train2017.zip"
    assert coco.checksums["md5"] == "cced6f7f71b7629ddf16f17bbcfab6b2"  # train, not val2017's (P18)
    assert (
        catalog.sources["llava_pretrain"].files[0].mirrors[0].repo == "liuhaotian/LLaVA-Pretrain"
    )  # 558K, not 595K
    annotations = catalog.sources["mgllava_annotations"].files
    assert all(
        f.mirrors[0].repo_type == "model" for f in annotations if f.mirrors[0].repo == "PhoenixZ/MG-LLaVA"
    )


@pytest.mark.parametrize(
    ("source", "member", "expected"),
    [
        ("coco", "train2017/000000000009.jpg", "coco/train2017/000000000009.jpg"),
        ("coco", "val2017/000000000009.jpg", None),
        ("ai2d", "ai2d/images/1.png", "ai2d/images/1.png"),
        ("ai2d", "ai2d/annotations/1.png.json", None),
        ("llava_pretrain", "00000/000000010.jpg", "LLaVA-Pretrain/images/00000/000000010.jpg"),
        ("allava_laion", "some/deep/dir/100277305.jpeg", "allava_laion/images/100277305.jpeg"),
        (
            "allava_vflan",
            "images_191task_1k/PACS+x_1.png",
            "allava_vflan/images/images_191task_1k/PACS+x_1.png",
        ),
        (
            "wikiart",
            "data/wikiart/images/arnold-b#U00e3#U00b6cklin_x.jpg",
            "wikiart/images/arnold-b#U00e3#U00b6cklin_x.jpg",
        ),
        ("dvqa", "images/bar_train_00157767.png", "dvqa/images/bar_train_00157767.png"),
        ("docvqa", "train/documents/ffbf0023_4.png", "docvqa/images/ffbf0023_4.png"),
        ("gqa", "__MACOSX/images/._1.jpg", None),
    ],
)
def test_members_map_onto_the_layout(source, member, expected):
    f = load_catalog(SHIPPED_CATALOG).sources[source].files[0]
    assert f.map_member(member) == expected


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda r: r["sources"]["coco"]["files"][0].__setitem__("size", "big"),
            "source 'coco', field 'files[0].size'",
        ),
        (
            lambda r: r["sources"]["gqa"]["files"][0].__setitem__("mirrors", []),
            "source 'gqa', field 'files[0].mirrors'",
        ),
        (
            lambda r: r["sources"]["ai2d"]["files"][0].__setitem__("checksums", {"md5": "zz"}),
            "source 'ai2d', field 'files[0].checksums'",
        ),
        (
            lambda r: r["sources"]["textvqa"]["files"][0]["mirrors"].__setitem__(0, "ftp://x/y.zip"),
            "source 'textvqa', field 'files[0].mirrors[0]'",
        ),
        (lambda r: r["sources"]["coco"].__setitem__("kind", "torrent"), "source 'coco', field 'kind'"),
        (
            lambda r: r["sources"]["vg_part1"]["files"][0].__setitem__("target", "../etc"),
            "source 'vg_part1', field 'files[0].target'",
        ),
        (lambda r: r["sources"]["coco"].__setitem__("colour", "red"), "source 'coco', field 'colour'"),
    ],
)
def test_bad_entries_name_source_and_field(raw, edit, message):
    bad = copy.deepcopy(raw)
    edit(bad)
    with pytest.raises(CatalogError) as e:
        parse_catalog(bad, "test.yaml")
    assert message in str(e.value)
    assert "catalog test.yaml" in str(e.value)


def test_every_problem_is_reported_at_once(raw):
    bad = copy.deepcopy(raw)
    bad["sources"]["coco"]["files"][0]["size"] = -1
    bad["sources"]["gqa"]["kind"] = "ftp"
    with pytest.raises(CatalogError) as e:
        parse_catalog(bad, "x.yaml")
    assert "'coco'" in str(e.value) and "'gqa'" in str(e.value)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(CatalogError, match="file not found.*MGDATA_CATALOG"):
        load_catalog(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("sources: [unclosed")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_catalog(tmp_path / "bad.yaml")


def test_selection(raw):
    catalog = parse_catalog(raw)
    assert list(catalog.selected(["gqa", "coco"])) == ["coco", "gqa"]
    with pytest.raises(CatalogError, match="unknown source"):
        catalog.selected(["nope"])
