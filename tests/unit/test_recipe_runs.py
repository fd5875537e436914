"""What a run asks of recipes: which sources it ingests, where each recipe's tree lands, and that a tree holds the
store's objects (images and training JSONs) as hardlinks, so one store serves every recipe with each byte once."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image
from test_recipes import publish_source

from mgdata.catalog import SHIPPED_CATALOG, load_catalog
from mgdata.recipes import RecipeError, lay_out, load_recipes, parse_recipe, recipe_sources, run_selection
from mgdata.settings import Settings

CATALOG = load_catalog(SHIPPED_CATALOG)
RECIPES = load_recipes(catalog=CATALOG)


def test_a_run_with_no_recipe_and_no_source_ingests_the_enabled_sources_only():
    selected = run_selection(CATALOG, [], [])
    assert set(selected) == {n for n, s in CATALOG.sources.items() if s.enabled}
    assert not {"sam_sft", "sharegpt4v_annotations", "allava_annotations"} & set(selected)


def test_a_recipe_selects_its_image_sources_and_the_sources_of_its_jsons():
    selected = set(run_selection(CATALOG, [], ["llava-v1.5"]))
    assert selected == {
        "llava_pretrain",
        "llava_instruct",
        "coco",
        "gqa",
        "ocr_vqa",
        "textvqa",
        "vg_part1",
        "vg_part2",
    }
    share = set(run_selection(CATALOG, [], ["sharegpt4v"]))
    assert {"sam_sft", "sharegpt4v_annotations", "wikiart"} <= share and "mgllava_annotations" not in share
    # named sources and recipes add up; a disabled source runs when named
    both = set(run_selection(CATALOG, ["docvqa"], ["allava"]))
    assert both == {"allava_laion", "allava_vflan", "allava_annotations", "docvqa"}


def test_an_unknown_recipe_is_named_with_the_shipped_ones():
    with pytest.raises(RecipeError, match=r"unknown recipe\(s\) \['llava-2'\].*'llava-v1.5'"):
        run_selection(CATALOG, [], ["llava-2"])


def test_every_shipped_recipe_json_with_a_source_lands_where_that_source_puts_it():
    for recipe in RECIPES.values():
        for t in recipe.training:
            if t.source:
                files = CATALOG.sources[t.source].files
                assert any(
                    f.target == t.store or (f.listed and t.store.startswith(f.target + "/")) for f in files
                ), (recipe.name, t.json_path)
                if not t.optional:
                    assert t.source in recipe_sources(recipe)


def test_a_recipe_json_its_source_does_not_deliver_is_refused_naming_both():
    raw = {
        "name": "tiny",
        "title": "Tiny",
        "trainer": "LLaVA",
        "data": ".",
        "sources": ["coco"],
        "training": [
            {
                "stage": "finetune",
                "json": "mix.json",
                "image_folder": ".",
                "contract": "llava-v1",
                "source": "llava_instruct",
                "store": "annotations/not_there.json",
            }
        ],
    }
    with pytest.raises(
        RecipeError, match="source llava_instruct lands no file at annotations/not_there.json"
    ):
        parse_recipe(raw, "tiny.yaml", CATALOG)


def test_recipe_trees_default_beside_the_layout_dir_and_follow_the_settings(monkeypatch, tmp_path):
    for var in ("MGDATA_RECIPES", "MGDATA_RECIPES_DIR", "MGDATA_LAYOUT_DIR"):
        monkeypatch.delenv(var, raising=False)
    assert Settings.from_env().recipe_root("allava") is None  # no tree anywhere unless asked for
    monkeypatch.setenv("MGDATA_LAYOUT_DIR", str(tmp_path / "mg" / "data"))
    monkeypatch.setenv("MGDATA_RECIPES", "llava-v1.5, allava")
    settings = Settings.from_env()
    assert settings.recipes == ("llava-v1.5", "allava")
    assert settings.recipe_root("allava") == tmp_path / "mg" / "recipes" / "allava"
    assert (
        Settings.from_env({"recipes_dir": str(tmp_path / "r")}).recipe_root("allava")
        == tmp_path / "r" / "allava"
    )
    assert Settings.from_env({"recipes": ["sharegpt4v"]}).recipes == ("sharegpt4v",)


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (9, 9, 9)).save(out, format="JPEG")
    return out.getvalue()


def test_a_recipe_tree_links_the_stores_images_and_jsons_and_names_an_absent_json(tmp_path):
    from mgdata.storage import open_store

    store = open_store(str(tmp_path / "store"))
    publish_source(store, "coco", {"coco/train2017/1.jpg": _jpeg()})
    publish_source(store, "llava_pretrain", {"LLaVA-Pretrain/images/00000/1.jpg": _jpeg()})
    mix = [{"id": "1", "image": "coco/train2017/1.jpg", "conversations": []}]
    store.put_bytes("annotations/llava_v1_5_mix665k.json", json.dumps(mix).encode())

    root = tmp_path / "llava"
    outcome = lay_out(store, RECIPES["llava-v1.5"], CATALOG, root)
    assert outcome["jsons"] == {
        "LLaVA-Pretrain/blip_laion_cc_sbu_558k.json": "absent",
        "llava_v1_5_mix665k.json": "linked",
    }
    for tree_path, key in (
        ("llava_v1_5_mix665k.json", "annotations/llava_v1_5_mix665k.json"),
        ("coco/train2017/1.jpg", "data/coco/train2017/1.jpg"),
        ("LLaVA-Pretrain/images/00000/1.jpg", "data/LLaVA-Pretrain/images/00000/1.jpg"),
    ):
        assert (root / tree_path).stat().st_ino == store.local_path(key).stat().st_ino, tree_path
    again = lay_out(store, RECIPES["llava-v1.5"], CATALOG, root)
    assert again["jsons"]["llava_v1_5_mix665k.json"] == "unchanged" and again.get("linked", 0) == 0


def test_a_catalog_without_a_recipes_sources_still_serves_the_others_and_names_what_is_lacking():
    small = CATALOG.model_copy(
        update={"sources": {n: s for n, s in CATALOG.sources.items() if n != "sam_sft"}}
    )
    assert "allava_annotations" in run_selection(small, [], ["allava"])
    with pytest.raises(RecipeError, match=r"recipe sharegpt4v needs source\(s\) \['sam_sft'\]"):
        run_selection(small, [], ["sharegpt4v"])
