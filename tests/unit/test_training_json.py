"""The sample mirror's training JSONs (offline_mirror.training_json): the real files' shapes, every layout prefix of the
real instruct JSON cited, and a verdict that is the truth about the mirror (DocVQA skipped: not ready, and why)."""

from __future__ import annotations

import io
import json
from collections import Counter

import pytest

from mgdata.annotations import Check
from mgdata.catalog import SHIPPED_CATALOG, load_catalog
from offline_mirror.build import build_mirror
from offline_mirror.training_json import INSTRUCT_JSON, INSTRUCT_PREFIXES, PRETRAIN_JSON, box_json_name

IMAGES = 8


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    root = tmp_path_factory.mktemp("mirror")
    replicas = build_mirror(root, images_per_source=IMAGES)
    files = {
        r.name: json.loads((root / r.relpath).read_bytes()) for r in replicas if r.name.endswith(".json")
    }
    return root, replicas, files


def test_shapes_follow_the_real_files(mirror):
    _, _, files = mirror
    pretrain, instruct = files[PRETRAIN_JSON], files[INSTRUCT_JSON]
    prefix = Counter("/".join(s["image"].split("/")[:2]) for s in instruct if "image" in s)
    assert set(prefix) == set(INSTRUCT_PREFIXES) and len(INSTRUCT_PREFIXES) == 15
    assert {"/".join(s["image"].split("/")[:2]) for s in pretrain if "image" in s} == {
        "LLaVA-Pretrain/images",
        "allava_laion/images",
    }
    for samples in (pretrain, instruct):
        assert (
            "image" in samples[0]
        )  # text-only samples exist, never first (the trainer's columns come from it)
        assert any("image" not in s for s in samples)
        assert {type(s["id"]) for s in samples} == {int, str}
        for s in samples:
            roles = [t["from"] for t in s["conversations"]]
            assert set(roles) <= {"human", "gpt"} and roles[::2] == ["human"] * (len(roles) // 2)
            tokens = sum(t["value"].count("<image>") for t in s["conversations"])
            assert tokens == (1 if "image" in s else 0)
        assert any(len(s["conversations"]) > 2 for s in samples)  # multi-turn too
        boxes = files[box_json_name(PRETRAIN_JSON if samples is pretrain else INSTRUCT_JSON)]
        assert isinstance(boxes, list) and {b["id"] for b in boxes} == {
            s["id"] for s in samples if "image" in s
        }
        assert all(set(b) == {"id", "boxes", "scores", "labels"} for b in boxes)
        assert all(len(b["boxes"]) == len(b["scores"]) == len(b["labels"]) for b in boxes)


def test_the_verdict_on_the_mirror_names_docvqa_until_its_archive_is_provided(mirror):
    """Every cited image but DocVQA's is delivered by a served replica; DocVQA's come only from the inbox."""
    _, _, files = mirror
    catalog = load_catalog(SHIPPED_CATALOG)

    def verdict(present) -> dict:
        check = Check()
        for name in (PRETRAIN_JSON, INSTRUCT_JSON):
            check.check_file(
                name,
                io.BytesIO(json.dumps(files[name]).encode()),
                lambda image: "present" if present(image) else "missing",
                boxes_name=box_json_name(name),
                boxes=io.BytesIO(json.dumps(files[box_json_name(name)]).encode()),
            )
        return check.as_report(
            catalog, sources={"docvqa": {"status": "skipped", "error": "Register at X. More."}}
        )

    skipped = verdict(lambda image: not image.startswith("docvqa/"))
    docs = skipped["by_prefix"]["docvqa/images"]["referenced"]
    assert docs > 0 and skipped["ready"] is False
    assert (
        skipped["note"] == f"not ready: {docs} docvqa/images missing: source docvqa skipped (Register at X)"
    )
    provided = verdict(lambda image: True)
    assert provided["ready"] is True, provided["note"]
    assert provided["findings"]["image_column_dropped"]["count"] == 0
