"""The known pitfalls of the LLaVA-family corpora as named checks of the ready verdict (mgdata.pitfalls).

Each test builds the pitfall for real (manifest rows as the URL list and extraction write them, files with another
format's bytes, a folder outside a recipe's sources, text-only samples) and fails if its rule is taken away: the
check's name, count, examples, source, file and fix, and whether it blocks the verdict.
"""

from __future__ import annotations

import io
import json

import jsonschema
import pytest
from PIL import Image

from mgdata import manifest
from mgdata.annotations import Check, check_store, folder_resolver, store_resolver
from mgdata.catalog import SHIPPED_CATALOG, load_catalog, parse_catalog
from mgdata.recipes import RecipeCatalog, check_in_store, load_recipes
from mgdata.report import REPORT_SCHEMA
from mgdata.storage import open_store

CATALOG = load_catalog(SHIPPED_CATALOG)
RECIPES = load_recipes(catalog=CATALOG)
MIX = (
    "annotations/llava_v1_5_mix665k.json"  # where the catalog lands LLaVA's mix (llava-v1.5's finetune stage)
)


def image(fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (9, 90, 200)).save(out, format=fmt)
    return out.getvalue()


def sample(i, path=None) -> dict:
    s = {
        "id": str(i),
        "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A."}],
    }
    if path is None:
        s["conversations"][0]["value"] = "What?"
    else:
        s["image"] = path
    return s


# OCR-VQA's manifest as the pipeline writes it: a dead URL is a `missing` row (nothing stored, the fetch's error), a
# GIF under a .jpg name is re-encoded (`normalized`, `format` the original's) or quarantined (`invalid`)
OCR_ROWS = [
    {"path": "ocr_vqa/images/1.jpg", "status": "ok", "format": "JPEG", "error": None},
    {"path": "ocr_vqa/images/2.jpg", "status": "missing", "format": None, "error": "HTTP 404"},
    {
        "path": "ocr_vqa/images/3.jpg",
        "status": "normalized",
        "format": "GIF",
        "error": "GIF content, re-encoded",
    },
    {"path": "ocr_vqa/images/4.jpg", "status": "invalid", "format": "GIF", "error": "cannot re-encode GIF"},
    {"path": "ocr_vqa/images/5.jpg", "status": "invalid", "format": "JPEG", "error": "truncated image"},
]


@pytest.fixture
def store(tmp_path):
    store = open_store((tmp_path / "store").as_uri())
    sources = {
        "ocr_vqa": OCR_ROWS,
        "coco": [{"path": "coco/train2017/1.jpg", "status": "ok", "format": "JPEG", "error": None}],
        "docvqa": [{"path": "docvqa/images/d.png", "status": "ok", "format": "PNG", "error": None}],
    }
    for name, rows in sources.items():
        for row in rows:
            if row["status"] in manifest.USABLE:
                store.put_bytes(f"data/{row['path']}", image())
        table = manifest.to_table([r | {"bytes": 1, "origin": "x", "run_id": "r"} for r in rows])
        manifest.write_table(store, manifest.source_key(name), table)
    return store


def catalog_check(store, samples: list[dict]) -> dict:
    """The catalog's check, with LLaVA's mix as its one training JSON."""
    store.put_bytes(MIX, json.dumps(samples).encode())
    raw = json.loads(json.dumps(CATALOG.model_dump(by_alias=True)))
    raw["training"] = [{"json": MIX, "contract": "llava-v1"}]
    report = check_store(store, parse_catalog(raw))
    schema = json.loads(REPORT_SCHEMA.read_text())["properties"]["ready_to_train"]
    jsonschema.validate(report, schema)  # the report's contract, named checks included
    return report


def finetune(store) -> tuple[dict, dict]:
    """llava-v1.5's verdict from the same store (its finetune stage reads LLaVA's mix), and that stage; resolved, as a
    run resolves it, in every catalog source's manifest."""
    in_store = store_resolver(store, list(CATALOG.sources)).in_store
    verdict = check_in_store(store, RECIPES["llava-v1.5"], CATALOG, in_store=in_store)
    return verdict, verdict["stages"][1]


def only(report: dict, check: str) -> dict:
    """The one folder a named check fired in."""
    (place,) = report["pitfalls"][check]["by"].values()
    return place


def test_dead_urls_of_ocr_vqa_are_their_own_class_with_the_mirror_as_the_fix(store):
    # 2.jpg's URL was dead; 9.jpg has no row at all (dataset.json never listed it): missing, but not a dead URL
    report = catalog_check(store, [sample(1, "ocr_vqa/images/1.jpg"), sample(2, "ocr_vqa/images/2.jpg"),
                                   sample(9, "ocr_vqa/images/9.jpg")])  # fmt: skip
    assert (report["missing"], report["ready"]) == (2, False)
    dead = report["pitfalls"]["url_dead"]
    assert (dead["effect"], dead["count"], dead["upstream"]) == (
        "blocks",
        1,
        "https://github.com/haotian-liu/LLaVA/issues/1618",
    )
    place = dead["by"]["ocr_vqa/images"]
    assert (place["source"], place["file"], place["jsons"]) == ("ocr_vqa", "dataset.json", [MIX])
    assert place["first"] == ["ocr_vqa/images/2.jpg (HTTP 404)"]
    assert place["fix"] == (
        "run with ocr_vqa_images=mirror (MGDATA_OCR_VQA_IMAGES=mirror): the sha256-pinned "
        "ocr_vqa_images_llava_v15.zip on the Hub (weizhiwang/llava_v15_instruction_images) holds them"
    )
    assert place["message"] == (
        f"1 ocr_vqa/images images cited by {MIX} were never delivered: their URLs in source ocr_vqa's dataset.json "
        f"are dead (ocr_vqa/images/2.jpg (HTTP 404)); fix: {place['fix']}"
    )
    assert (
        report["note"].startswith("not ready: 2 ocr_vqa/images missing; ")
        and place["message"] in report["note"]
    )

    # the recipe's check says the same, through the same rule
    verdict, stage = finetune(store)
    assert stage["pitfalls"] == {"url_dead": 1} and place["message"] in stage["note"]
    assert "ocr_vqa_images=mirror" in verdict["note"] and not verdict["ready"]


def test_misnamed_bytes_the_trainer_reads_are_a_note_and_quarantined_ones_block(store):
    read = catalog_check(store, [sample(1, "ocr_vqa/images/1.jpg"), sample(3, "ocr_vqa/images/3.jpg")])
    assert read["ready"] and read["present"] == 2  # re-encoded at extraction: usable, not a blocker
    place = only(read, "format_misnamed")
    assert read["pitfalls"]["format_misnamed"]["effect"] == "note"
    assert (place["count"], place["source"], place["fix"]) == (1, "ocr_vqa", None)
    assert place["first"] == ["ocr_vqa/images/3.jpg (GIF bytes, re-encoded at extraction)"]
    assert (
        "the trainer reads them (source ocr_vqa re-encoded them to their name's format at extraction)"
        in place["message"]
    )
    assert (
        read["note"].startswith("ready to train: all 2 referenced images open")
        and f"notes: {place['message']}" in read["note"]
    )

    # 4.jpg (GIF bytes, quarantined) is this class; 5.jpg (a truncated JPEG under .jpg) is only broken
    bad = catalog_check(store, [sample(4, "ocr_vqa/images/4.jpg"), sample(5, "ocr_vqa/images/5.jpg")])
    assert (bad["broken"], bad["ready"]) == (2, False)
    held = only(bad, "format_misnamed_quarantined")
    assert bad["pitfalls"]["format_misnamed_quarantined"]["effect"] == "blocks"
    assert (held["count"], held["first"]) == (1, ["ocr_vqa/images/4.jpg (GIF bytes, quarantined)"])
    assert "are in quarantine/ocr_vqa/" in held["message"] and "ocr_vqa_images=mirror" in held["fix"]
    assert held["message"] in bad["note"] and bad["pitfalls"]["format_misnamed"]["count"] == 0

    _, stage = finetune(store)  # the recipe's check, from the same rows
    assert stage["pitfalls"] == {"format_misnamed_quarantined": 1} and held["message"] in stage["note"]


def test_misnamed_bytes_in_a_local_folder_are_found_when_images_are_opened(tmp_path):
    data = tmp_path / "data"
    (data / "ocr_vqa/images").mkdir(parents=True)
    (data / "ocr_vqa/images/1.jpg").write_bytes(image("GIF"))  # LLaVA #593: a GIF saved under .jpg
    (data / "ocr_vqa/images/2.jpg").write_bytes(image())
    train = tmp_path / "train.json"
    train.write_text(json.dumps([sample(1, "ocr_vqa/images/1.jpg"), sample(2, "ocr_vqa/images/2.jpg")]))

    def run(decode: bool) -> dict:
        check = Check()
        with open(train, "rb") as f:
            check.check_file("train.json", f, folder_resolver(data, decode=decode))
        return check.as_report(CATALOG)

    report = run(decode=True)
    assert report["ready"] and only(report, "format_misnamed")["first"] == [
        "ocr_vqa/images/1.jpg (GIF bytes)"
    ]
    assert "the trainer reads them (Pillow opens by content)" in report["note"]
    assert run(decode=False)["pitfalls"]["format_misnamed"]["count"] == 0  # --fast opens nothing


def test_a_folder_outside_the_recipes_sources_blocks_and_names_the_source_to_add(store):
    # docvqa/images is in the store (the catalog's docvqa), but llava-v1.5 does not have that source: its tree
    # holds no docvqa/ folder, so the trainer would not find the file
    samples = [sample(1, "coco/train2017/1.jpg"), sample(2, "docvqa/images/d.png")]
    assert catalog_check(store, samples)["ready"]  # the catalog lays it out
    verdict, stage = finetune(store)
    assert (stage["present"], stage["missing"], stage["ready"]) == (1, 1, False)
    assert stage["pitfalls"] == {"outside_layout": 1}
    assert stage["note"] == (
        f"not ready: 1 images cited by {MIX} lie in docvqa/images, which none of the recipe's sources lays out "
        "(docvqa/images/d.png); fix: add source docvqa to the recipe"
    )

    # a folder no catalog source provides: the recipe's `uncatalogued` says what would
    key = "annotations/sharegpt4v/sharegpt4v_mix665k_cap23k_coco-ap9k_lcs3k_sam9k_div2k.json"
    store.put_bytes(
        key, json.dumps([sample(1, "coco/train2017/1.jpg"), sample(2, "mmc4/images/s.jpg")]).encode()
    )
    recipe = RECIPES["sharegpt4v"].model_copy(
        update={"uncatalogued": {"mmc4/images": "MMC4's images, by URL"}}
    )
    share = check_in_store(store, recipe, CATALOG)["stages"][0]
    assert share["pitfalls"] == {"outside_layout": 1}
    assert (
        "lie in mmc4/images" in share["note"] and "fix: no catalog source has it yet: MMC4's" in share["note"]
    )

    # and for the catalog's own check, a folder none of its sources lays out, or a path outside data/
    report = catalog_check(store, [sample(1, "mmc4/images/s.jpg"), sample(2, "/abs/x.jpg")])
    outside = report["pitfalls"]["outside_layout"]["by"]
    assert outside["mmc4/images"]["fix"] == "add a source that lays it out to the catalog"
    assert outside["(outside data/)"]["fix"] == "make the JSON's paths relative to the image folder"
    assert "mmc4/images missing" not in report["note"]  # said once, by the named check
    assert outside["mmc4/images"]["message"] in report["note"]


def test_a_file_the_recipes_tree_holds_is_read_wherever_its_folder_comes_from(tmp_path):
    # verify --recipe over a trainer's tree: a file there is read, whichever source would have provided it
    root = tmp_path / "playground/data"
    (root / "docvqa/images").mkdir(parents=True)
    (root / "docvqa/images/d.png").write_bytes(image("PNG"))
    train = tmp_path / "mix.json"
    train.write_text(json.dumps([sample(1, "docvqa/images/d.png")]))
    check = Check(image_prefix=RecipeCatalog(RECIPES["llava-v1.5"], CATALOG, ".").prefix)
    with open(train, "rb") as f:
        check.check_file("mix.json", f, folder_resolver(root))
    report = check.as_report(RecipeCatalog(RECIPES["llava-v1.5"], CATALOG, "."))
    assert report["ready"] and report["pitfalls"]["outside_layout"]["count"] == 0
    assert (
        report["by_prefix"]["docvqa/images"]["note"]
        == "source docvqa provides it; the recipe does not have it"
    )


def test_text_only_samples_are_counted_apart_by_every_verdict(store):
    report = catalog_check(store, [sample(1, "coco/train2017/1.jpg"), sample("t1"), sample("t2")])
    assert report["ready"] and report["text_only"] == 2 and report["files"][0]["text_only"] == 2
    text = report["pitfalls"]["text_only"]
    assert (text["effect"], text["count"], text["upstream"]) == (
        "note",
        2,
        "https://github.com/haotian-liu/LLaVA/issues/546",
    )
    assert text["by"][MIX]["message"] == f"2 text-only samples in {MIX} (no image: nothing to check)"
    assert report["note"].endswith(f"; notes: 2 text-only samples in {MIX} (no image: nothing to check)")
    verdict, stage = finetune(store)
    assert stage["text_only"] == 2 and stage["pitfalls"] == {"text_only": 2}
    assert stage["note"].endswith("(no image: nothing to check)")
