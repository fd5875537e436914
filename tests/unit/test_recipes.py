"""Recipes: the shipped four load against the shipped catalog, a fifth is a data file, and `verify --recipe` reads a
trainer's tree where its launch scripts point, each JSON through its own trainer's contract."""

from __future__ import annotations

import io
import json
import textwrap

import pytest
from PIL import Image

from mgdata.__main__ import main
from mgdata.catalog import SHIPPED_CATALOG, load_catalog
from mgdata.contracts import CONTRACTS
from mgdata.recipes import RecipeError, load_recipes

CATALOG = load_catalog(SHIPPED_CATALOG)


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(out, format="JPEG")
    return out.getvalue()


def chat(image: bool = True) -> list[dict]:
    return [
        {"from": "human", "value": ("<image>\n" if image else "") + "What?"},
        {"from": "gpt", "value": "That."},
    ]


def write(root, files: dict) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())


@pytest.fixture
def llava_tree(tmp_path):
    """LLaVA-1.5's ./playground/data: the 558K captions beside their images, the 665K mix at the top."""
    root = tmp_path / "playground" / "data"
    write(
        root,
        {
            "LLaVA-Pretrain/images/00000/000000010.jpg": jpeg(),
            "LLaVA-Pretrain/blip_laion_cc_sbu_558k.json": [
                {"id": "000000010", "image": "00000/000000010.jpg", "conversations": chat()}
            ],
            "coco/train2017/000000033471.jpg": jpeg(),
            "gqa/images/2349510.jpg": jpeg(),
            "llava_v1_5_mix665k.json": [
                {"id": "000000033471", "image": "coco/train2017/000000033471.jpg", "conversations": chat()},
                {"id": 2349510, "image": "gqa/images/2349510.jpg", "conversations": chat()},
                {"id": "sharegpt-1", "conversations": chat(image=False)},
            ],
        },
    )
    return root


def verify(*args, tmp_path) -> tuple[int, dict]:
    report = tmp_path / "verify.json"
    code = main(["verify", *args, "--report", str(report)])
    return code, json.loads(report.read_text())


def test_the_shipped_recipes_load_against_the_shipped_catalog():
    recipes = load_recipes(catalog=CATALOG)
    assert set(recipes) == {"mgllava", "llava-v1.5", "sharegpt4v", "allava"}
    for recipe in recipes.values():
        assert set(recipe.sources) <= set(CATALOG.sources)
        assert all(t.contract in CONTRACTS for t in recipe.training)
    # MG-LLaVA's corpus is every source the catalog enables, but LLaVA's mix JSON, which the catalog's optional
    # mix665k check reads; the other recipes' own sources are off until a run asks for their recipe
    enabled = {n for n, s in CATALOG.sources.items() if s.enabled}
    assert set(recipes["mgllava"].sources) == enabled - {"llava_instruct"}


def test_a_recipe_over_llava_1_5s_tree_is_ready_and_counts_text_only_samples_apart(llava_tree, tmp_path):
    code, result = verify("--recipe", "llava-v1.5", "--root", str(llava_tree), tmp_path=tmp_path)
    assert code == 0 and result["ready"]
    pretrain, finetune = result["stages"]
    assert (pretrain["contract"], pretrain["referenced"], pretrain["present"]) == ("llava-plain", 1, 1)
    assert pretrain["by_prefix"]["LLaVA-Pretrain/images"]["source"] == "llava_pretrain"
    assert (finetune["contract"], finetune["samples"], finetune["text_only"]) == ("llava-v1", 3, 1)
    assert finetune["by_prefix"]["coco/train2017"]["source"] == "coco"


def test_a_missing_image_makes_the_recipe_not_ready_and_names_its_source(llava_tree, tmp_path, capsys):
    (llava_tree / "gqa/images/2349510.jpg").unlink()
    code, result = verify("--recipe", "llava-v1.5", "--root", str(llava_tree), tmp_path=tmp_path)
    assert code == 1 and not result["ready"]
    finetune = result["stages"][1]
    gqa = finetune["by_prefix"]["gqa/images"]
    assert (gqa["source"], gqa["missing"]) == ("gqa", 1)
    assert finetune["first_missing"] == ["gqa/images/2349510.jpg"]
    assert "recipe llava-v1.5: not ready" in capsys.readouterr().out


def test_an_absent_json_is_named_and_blocks_unless_its_stage_is_optional(tmp_path):
    root = tmp_path / "ShareGPT4V"
    mix = "data/sharegpt4v/sharegpt4v_mix665k_cap23k_coco-ap9k_lcs3k_sam9k_div2k.json"
    write(
        root,
        {
            "data/llava/llava_pretrain/images/00000/1.jpg": jpeg(),
            mix: [
                {"id": "1", "image": "llava/llava_pretrain/images/00000/1.jpg", "conversations": chat()},
                {"id": "2", "image": "sam/images/sa_1.jpg", "conversations": chat()},
            ],
        },
    )
    code, result = verify("--recipe", "sharegpt4v", "--root", str(root), tmp_path=tmp_path)
    finetune, pretrain = result["stages"]
    assert pretrain["optional"] and not pretrain["checked"]  # the 1.2M-caption stage: absent, not required
    # ShareGPT4V's llava/llava_pretrain folder is LLaVA-Pretrain's images; SAM's SFT images are the sam_sft source's
    assert finetune["by_prefix"]["llava/llava_pretrain/images"]["source"] == "llava_pretrain"
    assert finetune["by_prefix"]["sam/images"]["source"] == "sam_sft"
    assert finetune["by_prefix"]["sam/images"]["missing"] == 1
    assert finetune["unprovided_prefixes"] == []
    assert code == 1 and not result["ready"]

    (root / mix).unlink()
    code, result = verify("--recipe", "sharegpt4v", "--root", str(root), tmp_path=tmp_path)
    assert code == 1 and result["stages"][0]["files"][0]["status"] == "absent"


def test_a_fifth_recipe_is_a_data_file(tmp_path):
    (tmp_path / "tinyllava.yaml").write_text(
        textwrap.dedent(
            """\
            name: tinyllava
            title: TinyLLaVA
            trainer: "LLaVA's LazySupervisedDataset"
            data: .
            sources: [coco, gqa]
            training:
              - {stage: finetune, json: mix.json, image_folder: ., contract: llava-v1, url: "https://example.org/mix.json"}
            """
        )
    )
    assert load_recipes(tmp_path, catalog=CATALOG)["tinyllava"].sources == ["coco", "gqa"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"sources": ["coco", "sam"]}, "['sam'] are not in the catalog"),
        ({"name": "other"}, "its file must be other.yaml"),
        (
            {
                "training": [
                    {"stage": "x", "json": "a.json", "image_folder": ".", "contract": "qwen", "url": "u"}
                ]
            },
            "qwen",
        ),
        (
            {"training": [{"stage": "x", "json": "a.json", "image_folder": ".", "contract": "llava-v1"}]},
            "exactly one",
        ),
    ],
)
def test_a_recipe_that_contradicts_the_catalog_or_the_contracts_is_refused_with_its_file(
    tmp_path, change, message
):
    raw = {
        "name": "r",
        "title": "R",
        "trainer": "t",
        "data": ".",
        "sources": ["coco"],
        "training": [
            {"stage": "x", "json": "a.json", "image_folder": ".", "contract": "llava-v1", "url": "u"}
        ],
    } | change
    (tmp_path / "r.yaml").write_text(json.dumps(raw))
    with pytest.raises(RecipeError, match="r.yaml") as e:
        load_recipes(tmp_path, catalog=CATALOG)
    assert message in str(e.value)


def test_verify_names_an_unknown_recipe_and_exits_2(tmp_path, capsys):
    assert main(["verify", "--recipe", "llava-v9", "--root", str(tmp_path)]) == 2
    assert "no recipe 'llava-v9'" in capsys.readouterr().err


def publish_source(store, name: str, images: dict[str, bytes]) -> None:
    """A source as finalize leaves it: its objects under data/ and its manifest (usable rows)."""
    from mgdata import manifest

    rows = []
    for path, data in images.items():
        store.put_bytes(f"data/{path}", data)
        rows.append({"path": path, "bytes": len(data), "status": "ok", "format": "JPEG", "run_id": "r"})
    manifest.write_table(store, manifest.source_key(name), manifest.to_table(rows))


def test_one_store_lays_out_each_recipes_tree_with_every_image_once(tmp_path):
    from mgdata.recipes import lay_out
    from mgdata.storage import open_store

    store = open_store(str(tmp_path / "store"))
    publish_source(store, "llava_pretrain", {"LLaVA-Pretrain/images/00000/1.jpg": jpeg()})
    publish_source(store, "coco", {"coco/train2017/1.jpg": jpeg(), "coco/train2017/2.jpg": jpeg()})
    recipes = load_recipes(catalog=CATALOG)
    trees = {name: tmp_path / "trees" / name for name in ("llava-v1.5", "sharegpt4v")}
    outcomes = {name: lay_out(store, recipes[name], CATALOG, root) for name, root in trees.items()}

    llava, share = trees["llava-v1.5"], trees["sharegpt4v"] / "data"
    assert (llava / "LLaVA-Pretrain/images/00000/1.jpg").is_file() and (
        llava / "coco/train2017/2.jpg"
    ).is_file()
    # ShareGPT4V reads LLaVA-Pretrain's images under its own folder name
    assert (share / "llava/llava_pretrain/images/00000/1.jpg").is_file() and (
        share / "coco/train2017/1.jpg"
    ).is_file()
    # every tree's file is a hardlink to the store's object: the bytes are held once
    objects = {p.stat().st_ino for p in (tmp_path / "store" / "data").rglob("*.jpg")}
    placed = {p.stat().st_ino for t in trees.values() for p in t.rglob("*.jpg")}
    assert len(objects) == 3 and placed == objects
    assert all(o["files"] == 3 and o.get("linked") == 3 for o in outcomes.values())

    # laid out again: nothing placed; an image its manifest no longer lists leaves every tree
    again = lay_out(store, recipes["sharegpt4v"], CATALOG, trees["sharegpt4v"])
    assert again["unchanged"] == 3 and not again.get("linked")
    publish_source(store, "coco", {"coco/train2017/1.jpg": jpeg()})
    after = lay_out(store, recipes["llava-v1.5"], CATALOG, llava)
    assert after["removed"] == 1 and not (llava / "coco/train2017/2.jpg").exists()
    assert (llava / "coco/train2017/1.jpg").is_file()


def test_the_layout_command_lays_out_a_recipe_from_the_configured_store_and_names_the_jsons_to_add(
    tmp_path, monkeypatch, capsys
):
    from mgdata.storage import open_store

    store = open_store(str(tmp_path / "store"))
    publish_source(store, "coco", {"coco/train2017/1.jpg": jpeg()})
    monkeypatch.setenv("MGDATA_STORAGE", str(tmp_path / "store"))
    monkeypatch.delenv("MGDATA_CATALOG", raising=False)
    root = tmp_path / "playground" / "data"
    assert main(["layout", "--recipe", "llava-v1.5", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert (root / "coco/train2017/1.jpg").is_file()
    assert "llava-v1.5: 1 images" in out and "1 linked" in out
    assert "put llava_v1_5_mix665k.json there (source llava_instruct)" in out
    assert main(["layout", "--recipe", "nope", "--root", str(root)]) == 2


def test_a_recipes_verdict_comes_from_the_shared_store_each_json_where_the_store_holds_it(tmp_path):
    from mgdata.recipes import check_in_store
    from mgdata.storage import open_store

    store = open_store(str(tmp_path / "store"))
    publish_source(store, "llava_pretrain", {"LLaVA-Pretrain/images/00000/1.jpg": jpeg()})
    publish_source(store, "coco", {"coco/train2017/1.jpg": jpeg()})
    recipes = load_recipes(catalog=CATALOG)
    mix = [
        {"id": "1", "image": "coco/train2017/1.jpg", "conversations": chat()},
        {"conversations": chat(False)},
    ]
    store.put_bytes(
        "annotations/llava_v1_5_mix665k.json", json.dumps(mix).encode()
    )  # where the catalog lands it

    llava = check_in_store(store, recipes["llava-v1.5"], CATALOG)
    pretrain, finetune = llava["stages"]
    assert (finetune["checked"], finetune["ready"], finetune["referenced"], finetune["text_only"]) == (
        True,
        True,
        1,
        1,
    )
    assert not pretrain["checked"] and not llava["ready"]
    assert "annotations/blip_laion_cc_sbu_558k.json" in llava["note"]  # where its source lands it
    store.put_bytes(
        "annotations/blip_laion_cc_sbu_558k.json",
        json.dumps([{"id": "1", "image": "00000/1.jpg", "conversations": chat()}]).encode(),
    )
    assert check_in_store(store, recipes["llava-v1.5"], CATALOG)["ready"]

    # ShareGPT4V's llava/llava_pretrain folder resolves to LLaVA-Pretrain's objects; its SAM images are missing
    share = [
        {"id": "1", "image": "llava/llava_pretrain/images/00000/1.jpg", "conversations": chat()},
        {"id": "2", "image": "sam/images/sa_1.jpg", "conversations": chat()},
    ]
    key = "annotations/sharegpt4v/sharegpt4v_mix665k_cap23k_coco-ap9k_lcs3k_sam9k_div2k.json"
    store.put_bytes(key, json.dumps(share).encode())
    verdict = check_in_store(store, recipes["sharegpt4v"], CATALOG)
    finetune = verdict["stages"][0]
    assert (finetune["present"], finetune["missing"]) == (1, 1) and "sam/images" in finetune["note"]
    assert not verdict["ready"] and verdict["stages"][1]["optional"]
