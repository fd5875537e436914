"""The ready-to-train check: real JSON files in MG-LLaVA's format, a real data/ folder, real manifests in a store."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from PIL import Image

from mgdata import manifest
from mgdata.annotations import (
    AnnotationError,
    Check,
    StoredKeys,
    check_store,
    folder_resolver,
    store_resolver,
)
from mgdata.catalog import SHIPPED_CATALOG, load_catalog, parse_catalog
from mgdata.storage import LocalStore, open_store


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, "JPEG")
    return buf.getvalue()


def sample(i, image=None) -> dict:
    s = {
        "id": i,
        "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A."}],
    }
    if image is not None:
        s["image"] = image
    return s


def boxes(ids) -> list[dict]:
    return [{"id": str(i), "boxes": [[0.1, 0.2, 0.3, 0.4]], "scores": [0.9], "labels": ["cat"]} for i in ids]


SAMPLES = [
    sample("000000033471", "coco/train2017/000000033471.jpg"),
    sample("000000033471", "coco/train2017/000000033471.jpg"),  # duplicate id: allowed
    sample(52, "gqa/images/52.jpg"),  # int id: matched as str(id)
    sample("text-only"),  # no image: skipped
    sample("missing", "coco/train2017/000000000404.jpg"),
    sample("broken", "gqa/images/broken.jpg"),
    sample("sam", "mmc4/images/sa_1.jpg"),  # a prefix no catalog source provides
    sample("no-boxes", "coco/train2017/000000000009.jpg"),
]
BOX_IDS = ["000000033471", "52", "missing", "broken", "sam"]


@pytest.fixture
def data(tmp_path) -> Path:
    root = tmp_path / "data"
    for path in ("coco/train2017/000000033471.jpg", "gqa/images/52.jpg", "coco/train2017/000000000009.jpg"):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(jpeg())
    (root / "gqa/images/broken.jpg").write_bytes(jpeg()[:40])  # truncated: present, but does not decode
    return root


@pytest.fixture
def jsons(tmp_path) -> tuple[Path, Path]:
    train, bbox = tmp_path / "train.json", tmp_path / "train_only_box.json"
    train.write_text(json.dumps(SAMPLES))
    bbox.write_text(json.dumps(boxes(BOX_IDS)))
    return train, bbox


def run_check(train: Path, bbox: Path | None, resolve) -> dict:
    check = Check()
    with open(train, "rb") as s:
        if bbox is None:
            check.check_file("train.json", s, resolve)
        else:
            with open(bbox, "rb") as b:
                check.check_file("train.json", s, resolve, boxes_name="train_only_box.json", boxes=b)
    return check.as_report(load_catalog(SHIPPED_CATALOG))


def test_missing_broken_text_only_duplicates_and_missing_boxes(data, jsons):
    report = run_check(*jsons, folder_resolver(data, decode=True))
    assert report["checked"] is True and report["ready"] is False
    assert (report["samples"], report["text_only"]) == (8, 1)
    assert (report["referenced"], report["present"], report["missing"], report["broken"]) == (7, 4, 2, 1)
    assert report["missing_by_prefix"] == {"coco/train2017": 1, "mmc4/images": 1}
    assert report["first_missing"] == ["coco/train2017/000000000404.jpg", "mmc4/images/sa_1.jpg"]
    assert report["first_broken"] == ["gqa/images/broken.jpg"]
    assert report["ids_without_boxes"] == 1 and report["first_ids_without_boxes"] == ["no-boxes"]
    coco, gqa, sam = (report["by_prefix"][p] for p in ("coco/train2017", "gqa/images", "mmc4/images"))
    assert (coco["source"], coco["referenced"], coco["present"], coco["missing"]) == ("coco", 4, 3, 1)
    assert (gqa["source"], gqa["broken"], gqa["first_missing"]) == ("gqa", 1, ["gqa/images/broken.jpg"])
    assert sam["source"] is None and sam["note"] == "no catalog source provides this prefix"
    assert report["unprovided_prefixes"] == ["mmc4/images"]
    assert report["note"].startswith("not ready: 1 coco/train2017 missing; ")
    # a folder no source lays out is said once, by its named check, with the fix
    assert report["note"].endswith(
        "; 1 images cited by train.json lie in mmc4/images, which no catalog source lays out (mmc4/images/sa_1.jpg); "
        "fix: add a source that lays it out to the catalog"
    )
    assert "1 image samples whose id has no entry in the bbox JSON" in report["note"]
    assert report["findings"]["image_broken"] == {
        "effect": "crash",
        "what": "image references that Pillow (defaults) cannot open and convert('RGB')",
        "trainer": "mg_llava/module/mg_llava_dataset.py:68 .convert('RGB')",
        "count": 1,
        "first": ["gqa/images/broken.jpg"],
    }
    # existence only (verify --fast), a truncated file is only known to be there
    assert run_check(*jsons, folder_resolver(data, decode=False))["broken"] == 0


def test_ready_when_everything_is_there(data, tmp_path):
    train, bbox = tmp_path / "ok.json", tmp_path / "ok_box.json"
    train.write_text(json.dumps([SAMPLES[0], SAMPLES[1], SAMPLES[2], SAMPLES[3]]))
    bbox.write_text(json.dumps(boxes(["000000033471", "52"])))
    report = run_check(train, bbox, folder_resolver(data, decode=True))
    assert report["ready"] is True and report["referenced"] == report["present"] == 3
    assert report["note"].startswith("ready to train")
    # a JSON with no bbox JSON declared is not checked for boxes
    assert run_check(train, None, folder_resolver(data))["ids_without_boxes"] == 0


def test_not_an_array_of_samples_names_the_file(tmp_path, data):
    bad = tmp_path / "bad.json"
    bad.write_text('{"id": 1, "image": "coco/train2017/a.jpg"}')
    with pytest.raises(AnnotationError, match="train.json: expected a JSON array"):
        run_check(bad, None, folder_resolver(data))
    bad.write_text('[{"id": 1, "image": ')
    with pytest.raises(AnnotationError, match="train.json: not valid JSON"):
        run_check(bad, None, folder_resolver(data))


def test_store_check_reads_manifests_and_the_catalogs_training_section(tmp_path, jsons):
    store = open_store((tmp_path / "store").as_uri())
    rows = [
        ("coco", "coco/train2017/000000033471.jpg", "ok"),
        ("coco", "coco/train2017/000000000009.jpg", "normalized"),
        ("gqa", "gqa/images/52.jpg", "ok"),
        ("gqa", "gqa/images/broken.jpg", "invalid"),
        ("gqa", "gqa/images/dead-url.jpg", "missing"),  # a URL-list image whose URL was dead
    ]
    for source in ("coco", "gqa"):
        table = manifest.to_table(
            [{"path": p, "status": st, "bytes": 1, "run_id": "r"} for s, p, st in rows if s == source]
        )
        manifest.write_table(store, manifest.source_key(source), table)
    train, bbox = jsons
    store.put_file("annotations/train.json", train)
    store.put_file("annotations/train_box.json", bbox)
    raw = json.loads(json.dumps(load_catalog(SHIPPED_CATALOG).model_dump(by_alias=True)))
    raw["training"] = [
        {"json": "annotations/train.json", "boxes": "annotations/train_box.json"},
        {"json": "annotations/mix665k.json", "optional": True},
    ]
    catalog = parse_catalog(raw)
    report = check_store(store, catalog)
    assert (report["referenced"], report["present"], report["missing"], report["broken"]) == (7, 4, 2, 1)
    assert report["ids_without_boxes"] == 1 and report["ready"] is False
    assert [f["status"] for f in report["files"]] == ["checked", "absent (optional)"]

    # with a local tree, a usable path must also be a file there
    layout = tmp_path / "layout"
    (layout / "gqa/images").mkdir(parents=True)
    (layout / "gqa/images/52.jpg").write_bytes(jpeg())
    resolve = store_resolver(store, ["coco", "gqa"], layout_dir=layout)
    paths = ("gqa/images/52.jpg", "coco/train2017/000000033471.jpg", "gqa/images/dead-url.jpg")
    assert [resolve(p) for p in paths] == ["present", "missing", "missing"]

    # a required JSON absent: not checked, not ready, and the note says which
    raw["training"] = [{"json": "annotations/pretrain.json", "boxes": "annotations/pretrain_box.json"}]
    absent = check_store(store, parse_catalog(raw))
    assert (absent["checked"], absent["ready"]) == (False, False)
    assert "annotations/pretrain.json" in absent["note"]


def test_command_exit_status_and_report(data, jsons, tmp_path):
    train, bbox = jsons
    out = tmp_path / "verify.json"
    cmd = [sys.executable, "-m", "mgdata", "verify", "--data", str(data), "--json", str(train)]
    not_ready = subprocess.run(
        [*cmd, "--boxes", str(bbox), "--report", str(out)], capture_output=True, text=True
    )
    assert not_ready.returncode == 1, not_ready.stderr
    assert "mmc4/images" in not_ready.stdout and "coco/train2017/000000000404.jpg" in not_ready.stdout
    assert json.loads(out.read_text())["missing"] == 2
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps(SAMPLES[:4]))
    ready = subprocess.run([*cmd[:-1], str(ok)], capture_output=True, text=True)
    assert ready.returncode == 0, ready.stdout + ready.stderr
    unreadable = subprocess.run([*cmd[:-1], str(tmp_path / "nope.json")], capture_output=True, text=True)
    assert unreadable.returncode == 2 and "nope.json" in unreadable.stderr


def test_large_json_is_streamed_within_a_memory_bound(tmp_path):
    """300K samples (~190 MB): peak Python memory stays far below the file size, boxes included."""
    n = 300_000
    train, bbox = tmp_path / "big.json", tmp_path / "big_box.json"
    talk = "word " * 100
    with open(train, "w") as f:
        f.write("[")
        for i in range(n):
            s = sample(i, f"coco/train2017/{i:012d}.jpg" if i % 10 else None)
            s["conversations"][1]["value"] = talk
            f.write(("," if i else "") + json.dumps(s))
        f.write("]")
    with open(bbox, "w") as f:
        f.write("[" + ",".join(json.dumps(b) for b in boxes(range(0, n, 2))) + "]")
    size = train.stat().st_size
    assert size > 150e6

    tracemalloc.start()
    report = run_check(train, bbox, lambda path: "present")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert report["samples"] == n and report["text_only"] == n // 10
    assert (
        report["referenced"] == n - n // 10 and report["ids_without_boxes"] == n // 2
    )  # odd ids: all have images
    # what is kept is the bbox ids (150K short strings, ~15 MB); the 190 MB of samples stream through
    print(f"peak {peak / 1e6:.1f} MB")
    assert peak < 40e6, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.0f} MB JSON"


# ------------------------------------------------------------------------------------- the trainer's contract, rule by rule

IMG = "coco/train2017/1.jpg"
HUMAN = {"from": "human", "value": "<image>\nWhat is it?"}
GPT = {"from": "gpt", "value": "A cat."}


def s(i, image=IMG, conversations=(HUMAN, GPT), **extra) -> dict:
    out = {"id": i, "conversations": list(conversations), **extra}
    if image is not None:
        out["image"] = image
    return out


def box(i, n=1, **extra) -> dict:
    return {"id": i, "boxes": [[1, 2, 3, 4]] * n, "scores": [0.5] * n, "labels": ["cat"] * n, **extra}


GOOD = s("a")
# rule -> (training JSON, bbox JSON or None): each trains badly (or crashes) in MG-LLaVA, and today's check said ready
VIOLATIONS = {
    "sample_not_object": ([GOOD, ["not", "an", "object"]], None),
    "id_missing": ([GOOD, {"image": IMG, "conversations": [HUMAN, GPT]}], None),
    "id_types_mixed": ([GOOD, s(1.5)], None),
    "image_not_string": ([GOOD, s("b", image=[IMG])], None),
    "conversations_invalid": ([GOOD, {"id": "b", "image": IMG}], None),
    "role_invalid": ([GOOD, s("b", conversations=[{"from": "user", "value": "<image>\nhi"}, GPT])], None),
    "image_tokens": ([GOOD, s("b", conversations=[HUMAN, HUMAN, GPT])], None),
    "image_column_dropped": ([s("t", image=None), GOOD], None),
    "boxes_missing": ([s(7.0)], [box(7.0)]),  # a float id: str(7.0) keys the boxes, the lookup uses 7.0
    "boxes_malformed": ([GOOD], [box("a", scores=[0.5, 0.4])]),
    "box_coordinates_invalid": ([GOOD], [box("a", boxes=[[1, 2, 3, "4"]])]),
    "box_labels_unhashable": ([GOOD], [box("a", labels=[["cat", "dog"]])]),
    "box_scores_invalid": ([GOOD], [box("a", scores=["0.5"])]),
    "box_scores_not_float": ([GOOD], [box("a", scores=[1])]),
    "box_entry_without_id": ([GOOD], [box("a"), {"boxes": [], "scores": [], "labels": []}]),
}


def check_files(tmp_path, samples, bbox=None, *, resolve=None) -> dict:
    data = tmp_path / "data"
    (data / "coco/train2017").mkdir(parents=True, exist_ok=True)
    (data / IMG).write_bytes(jpeg())
    train = tmp_path / "t.json"
    train.write_text(json.dumps(samples))
    if bbox is not None:
        (tmp_path / "b.json").write_text(json.dumps(bbox))
    return run_check(
        train, tmp_path / "b.json" if bbox is not None else None, resolve or folder_resolver(data)
    )


@pytest.mark.parametrize("rule", sorted(VIOLATIONS))
def test_each_rule_of_the_trainer_is_a_counted_finding(tmp_path, rule):
    samples, bbox = VIOLATIONS[rule]
    report = check_files(tmp_path, samples, bbox)
    assert report["ready"] is False, report["note"]
    fired = {r for r, f in report["findings"].items() if f["count"]}
    assert fired == {rule}, report["findings"]
    finding = report["findings"][rule]
    assert finding["first"] and finding["effect"] in ("crash", "degrades")
    assert finding["what"] in report["note"]


def test_the_same_files_without_the_violation_are_ready(tmp_path):
    report = check_files(tmp_path, [GOOD, s(2), s("t", image=None)], [box("a"), box("2"), box("t", n=0)])
    assert report["ready"] is True, report["note"]
    # a bbox JSON that is an object is used as is
    report = check_files(tmp_path, [GOOD], {"a": box("a")})
    assert report["ready"] is True, report["note"]


def test_samples_dropped_before_reading_need_no_image_nor_boxes(tmp_path):
    only_human = s("d", image="coco/train2017/absent.jpg", conversations=[HUMAN])
    no_turns = s("e", image="coco/train2017/absent.jpg", conversations=[])
    report = check_files(tmp_path, [GOOD, only_human, no_turns], [box("a")])
    assert report["ready"] is True, report["note"]
    assert report["dropped_before_reading"] == 2 and report["findings"]["dropped_before_reading"][
        "first"
    ] == ["d", "e"]
    assert "2 samples the trainer drops before reading" in report["note"]


def test_paths_resolve_as_os_path_join_under_data(tmp_path):
    data = tmp_path / "data"
    spellings = ["./" + IMG, "coco//train2017/1.jpg", "coco/train2017/../train2017/1.jpg", str(data / IMG)]
    report = check_files(tmp_path, [s(i, image=p) for i, p in enumerate(spellings)])
    assert report["ready"] is True and report["present"] == 4, report["note"]
    assert set(report["by_prefix"]) == {"coco/train2017", "(outside data/)"}
    # the store resolves the same way: one manifest path, every spelling present; an absolute path is outside data/
    store = open_store((tmp_path / "store").as_uri())
    manifest.write_table(
        store,
        manifest.source_key("coco"),
        manifest.to_table([{"path": IMG, "status": "ok", "bytes": 1, "run_id": "r"}]),
    )
    resolve = store_resolver(store, ["coco"])
    assert [resolve(p) for p in spellings] == ["present", "present", "present", "missing"]
    assert store_resolver(store, ["coco"], layout_dir=data)(str(data / IMG)) == "present"


def test_verdict_says_why_a_prefix_is_missing(tmp_path):
    check = Check()
    with open(tmp_path / "t.json", "wb") as f:
        f.write(json.dumps([s("a", image="docvqa/images/x.png")]).encode())
    with open(tmp_path / "t.json", "rb") as f:
        check.check_file("t.json", f, lambda image: "missing")
    error = (
        "Register at https://rrc.cvc.uab.es/?ch=17, download train.tar.gz (Task 1). (Looked for inbox/...)"
    )
    report = check.as_report(
        load_catalog(SHIPPED_CATALOG), sources={"docvqa": {"status": "skipped", "error": error}}
    )
    assert report["note"].startswith(
        "not ready: 1 docvqa/images missing: source docvqa skipped (Register at https://rrc.cvc.uab.es/?ch=17"
    )


def test_verify_decodes_as_the_trainer_by_default_and_fast_says_what_it_skipped(data, tmp_path):
    train = tmp_path / "broken.json"
    train.write_text(json.dumps([sample("broken", "gqa/images/broken.jpg")]))
    cmd = [sys.executable, "-m", "mgdata", "verify", "--data", str(data), "--json", str(train)]
    decoded = subprocess.run(cmd, capture_output=True, text=True)
    assert decoded.returncode == 1 and "image_broken" in decoded.stdout, decoded.stdout + decoded.stderr
    fast = subprocess.run([*cmd, "--fast"], capture_output=True, text=True)
    assert fast.returncode == 0, fast.stdout + fast.stderr
    assert (
        fast.stdout.startswith("ready to train") and "existence only (--fast)" in fast.stdout.splitlines()[0]
    )


def test_verify_shows_progress_on_a_terminal_only(data, jsons):
    import os
    import pty

    train, bbox = jsons
    cmd = [
        sys.executable,
        "-m",
        "mgdata",
        "verify",
        "--data",
        str(data),
        "--json",
        str(train),
        "--boxes",
        str(bbox),
    ]
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=follower, text=True, timeout=120)
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closed: everything was read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
    assert done.returncode == 1
    assert b"8 samples, 7 images checked" in shown, shown
    piped = subprocess.run(cmd, capture_output=True, text=True)
    assert "images checked" not in piped.stderr


def test_each_declared_json_is_read_through_its_own_trainers_contract(tmp_path):
    """The shipped catalog reads LLaVA's mix665k as LLaVA's LazySupervisedDataset does: ids of mixed types (which
    MG-LLaVA's Dataset.from_list refuses) are fine, an `image` key with null crashes it (MG-LLaVA calls that
    text-only); MG-LLaVA's JSON beside it keeps MG-LLaVA's rules, and a rule both trainers have cites both lines."""
    store = open_store((tmp_path / "store").as_uri())
    rows = [{"path": "coco/train2017/1.jpg", "status": "ok", "bytes": 1, "run_id": "r"}]
    manifest.write_table(store, manifest.source_key("coco"), manifest.to_table(rows))
    mix = [
        {"id": "1", "image": "coco/train2017/1.jpg", "conversations": sample(0)["conversations"]},
        {"id": 2.5, "image": "coco/train2017/1.jpg", "conversations": sample(0)["conversations"]},
        {"id": "3", "image": None, "conversations": sample(0)["conversations"]},
        {"id": "4", "image": "coco/train2017/gone.jpg", "conversations": sample(0)["conversations"]},
    ]
    mg = [
        sample("1", "coco/train2017/1.jpg"),
        sample(2.5, "coco/train2017/1.jpg"),
        sample("3", "coco/train2017/x.jpg"),
    ]
    store.put_bytes("annotations/llava_v1_5_mix665k.json", json.dumps(mix).encode())
    store.put_bytes("annotations/mg.json", json.dumps(mg).encode())
    store.put_bytes("annotations/mg_box.json", json.dumps(boxes(["1", "2.5", "3"])).encode())
    shipped = load_catalog(SHIPPED_CATALOG)
    assert next(t.contract for t in shipped.training if t.json_key.endswith("mix665k.json")) == "llava-v1"
    raw = json.loads(json.dumps(shipped.model_dump(by_alias=True)))
    raw["training"] = [{"json": "annotations/mg.json", "boxes": "annotations/mg_box.json"}] + [
        t for t in raw["training"] if t["json"].endswith("mix665k.json")
    ]
    report = check_store(store, parse_catalog(raw))

    mg_file, mix_file = report["files"]
    assert (mg_file["contract"], mix_file["contract"]) == ("mgllava", "llava-v1")
    assert mg_file["findings"] == {
        "id_types_mixed": 1,
        "image_missing": 1,
        "boxes_missing": 1,
    }  # 2.5 never matches
    assert mix_file["findings"] == {"image_not_string": 1, "image_missing": 1}
    trainer = report["findings"]["image_missing"]["trainer"]
    assert "mg_llava_dataset.py" in trainer and "llava/train/train.py:701" in trainer
    assert report["findings"]["image_missing"]["count"] == 2 and not report["ready"]


def test_a_catalog_naming_an_unknown_contract_is_refused():
    raw = json.loads(json.dumps(load_catalog(SHIPPED_CATALOG).model_dump(by_alias=True)))
    raw["training"] = [{"json": "annotations/x.json", "contract": "qwen-vl"}]
    with pytest.raises(Exception, match="qwen-vl"):
        parse_catalog(raw)


def test_stored_keys_lists_each_folder_once_and_asks_key_by_key_past_a_page(tmp_path):
    calls: list[tuple[str, str]] = []

    class Counting(LocalStore):
        listing = False  # a local listing stats its files: those are not the caller's requests

        def list(self, prefix):
            calls.append(("list", prefix))
            self.listing = True
            try:
                return iter([*super().list(prefix)])
            finally:
                self.listing = False

        def stat(self, key):
            if not self.listing:
                calls.append(("stat", key))
            return super().stat(key)

    store = Counting(tmp_path / "s")
    for key in (
        "annotations/a.json",
        "annotations/b.json",
        "big/1.json",
        "big/2.json",
        "big/3.json",
        "top.json",
    ):
        store.put_bytes(key, b"[]")
    calls.clear()
    stored = StoredKeys(store)
    stored.PAGE = 2  # "big/" holds more than a page
    assert "annotations/a.json" in stored and "annotations/b.json" in stored
    assert "annotations/c.json" not in stored
    assert calls == [("list", "annotations/")]
    assert "big/3.json" in stored and "big/4.json" not in stored and "top.json" in stored
    assert calls[1:] == [
        ("list", "big/"),
        ("stat", "big/3.json"),
        ("stat", "big/4.json"),
        ("stat", "top.json"),
    ]
