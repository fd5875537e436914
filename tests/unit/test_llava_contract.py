"""LLaVA's contract against LLaVA's own code: each adversarial sample is read by a line-for-line transcript of
`LazySupervisedDataset` (haotian-liu/LLaVA @ c121f04, llava/train/train.py:658-739, `preprocess_multimodal` 308-329,
`preprocess_plain` 588-607, `preprocess_v1` 414-434, the modality-grouped sampler 683-690 and
llava/train/llava_trainer.py:62, the feature accounting of llava/model/llava_arch.py:231-261), and by the check;
both must give the outcome the case names."""

from __future__ import annotations

import copy
import io
import json
import os

import pytest
from PIL import Image

from mgdata.annotations import Check, folder_resolver
from mgdata.contracts import CONTRACTS, LLAVA_PLAIN, LLAVA_V1

IMAGE = "<image>"


# --- LLaVA's lines, transcribed (mm_use_im_start_end False, vicuna_v1's roles and separators) ---------------------


def preprocess_multimodal(sources):
    for source in sources:
        for sentence in source:
            if IMAGE in sentence["value"]:
                sentence["value"] = sentence["value"].replace(IMAGE, "").strip()
                sentence["value"] = IMAGE + "\n" + sentence["value"]
                sentence["value"] = sentence["value"].strip()
            sentence["value"] = sentence["value"].replace(IMAGE, IMAGE)
    return sources


def preprocess_plain(sources):
    conversations = []
    for source in sources:
        assert len(source) == 2
        assert IMAGE in source[0]["value"]
        source[0]["value"] = IMAGE
        conversations.append(source[0]["value"] + source[1]["value"] + "\n")
    return conversations


def preprocess_v1(sources):
    roles = {"human": "USER", "gpt": "ASSISTANT"}
    conv_roles, seps = ("USER", "ASSISTANT"), (" ", "</s>")
    conversations = []
    for i, source in enumerate(sources):
        if roles[source[0]["from"]] != conv_roles[0]:
            source = source[1:]
        messages = []
        for j, sentence in enumerate(source):
            role = roles[sentence["from"]]
            assert role == conv_roles[j % 2], f"{i}"
            messages.append((role, sentence["value"]))
        prompt = "A chat." + seps[0]  # Conversation.get_prompt, SeparatorStyle.TWO
        for k, (role, message) in enumerate(messages):
            prompt += role + ": " + message + seps[k % 2] if message else role + ":"
        conversations.append(prompt)
    return conversations


def llava_reads(sample, image_folder: str, version: str) -> str:
    """'ok', 'degrades' or 'crash': what LLaVA's training does with a file holding this one sample."""
    try:
        if version == "v1":  # --group_by_modality_length True: every sample's length before the first step
            cur_len = sum(len(conv["value"].split()) for conv in sample["conversations"])
            assert (cur_len if "image" in sample else -cur_len) != 0, "Should not have zero length."
        sources = [sample]
        if "image" in sources[0]:
            image_file = sample["image"]
            Image.open(os.path.join(image_folder, image_file)).convert("RGB")
            sources = preprocess_multimodal(copy.deepcopy([e["conversations"] for e in sources]))
        else:
            sources = copy.deepcopy([e["conversations"] for e in sources])
        prompt = (preprocess_plain if version == "plain" else preprocess_v1)(sources)[0]
        features = [("image" if "image" in sample else "zeros")]  # one per sample: its image or the blank one
        # image tokens come from tokenizer_image_token: always under plain, under v1 only when has_image (438-447)
        tokens = prompt.count(IMAGE) if version == "plain" or "image" in sample else 0
        if tokens == 0:
            return "degrades" if "image" in sample else "ok"  # features[0][0:0]: the image is dropped
        used = [features[i] for i in range(tokens)]  # IndexError past the batch's features
        return "degrades" if used == ["zeros"] else "ok"
    except Exception:
        return "crash"


# --- the cases ---------------------------------------------------------------------------------------------------


def chat(*turns):
    return [{"from": role, "value": value} for role, value in turns]


GOOD = chat(("human", "<image>\nWhat is it?"), ("gpt", "A cat."))
TEXT = chat(("human", "Tell me a joke."), ("gpt", "No."))

V1_CASES = {
    "an image sample": ({"id": "1", "image": "coco/a.jpg", "conversations": GOOD}, "ok"),
    "a text-only sample": ({"id": "2", "conversations": TEXT}, "ok"),
    "no id, as LLaVA never reads it": ({"image": "coco/a.jpg", "conversations": GOOD}, "ok"),
    "an odd id (a float)": ({"id": 1.5, "image": "coco/a.jpg", "conversations": GOOD}, "ok"),
    "<image> after the text": (
        {"image": "coco/a.jpg", "conversations": chat(("human", "What? <image>"), ("gpt", "A cat."))},
        "ok",
    ),
    "a leading gpt message, skipped": (
        {
            "image": "coco/a.jpg",
            "conversations": chat(("gpt", "Hi."), *[(t["from"], t["value"]) for t in GOOD]),
        },
        "ok",
    ),
    "the image missing": ({"image": "coco/gone.jpg", "conversations": GOOD}, "crash"),
    "a wrong prefix": ({"image": "llava/llava_pretrain/images/a.jpg", "conversations": GOOD}, "crash"),
    "the image undecodable": ({"image": "coco/cut.jpg", "conversations": GOOD}, "crash"),
    "image null": ({"image": None, "conversations": GOOD}, "crash"),
    "image an empty string (the folder itself)": ({"image": "", "conversations": GOOD}, "crash"),
    "image a list": ({"image": ["coco/a.jpg"], "conversations": GOOD}, "crash"),
    "not an object": (["coco/a.jpg"], "crash"),
    "no conversations": ({"image": "coco/a.jpg"}, "crash"),
    "a value that is a number": ({"conversations": chat(("human", 3), ("gpt", "three"))}, "crash"),
    "a message without from": (
        {"conversations": [{"value": "hi"}, {"from": "gpt", "value": "hello"}]},
        "crash",
    ),
    "a role that is not human or gpt": ({"conversations": chat(("user", "hi"), ("gpt", "hello"))}, "crash"),
    "two human messages in a row": ({"conversations": chat(("human", "hi"), ("human", "there"))}, "crash"),
    "no message": ({"conversations": []}, "crash"),
    "no word at all": ({"conversations": chat(("human", " "), ("gpt", ""))}, "crash"),
    "<image> in two messages": (
        {
            "image": "coco/a.jpg",
            "conversations": chat(("human", "<image> a"), ("gpt", "b"), ("human", "<image>"), ("gpt", "c")),
        },
        "crash",
    ),
    "an image sample without <image>": ({"image": "coco/a.jpg", "conversations": TEXT}, "degrades"),
    "a text-only sample with <image>, tokenized as text": ({"conversations": GOOD}, "ok"),
}

PLAIN_CASES = {
    "a caption pair": ({"id": "1", "image": "00000/1.jpg", "conversations": GOOD}, "ok"),
    "roles are not read": (
        {"image": "00000/1.jpg", "conversations": chat(("user", "<image>"), ("bot", "x"))},
        "ok",
    ),
    "three messages": ({"image": "00000/1.jpg", "conversations": [*GOOD, GOOD[1]]}, "crash"),
    "no <image> in the first message": ({"image": "00000/1.jpg", "conversations": TEXT}, "crash"),
    "a text-only sample without <image>": ({"conversations": TEXT}, "crash"),
    "the image missing": ({"image": "00000/gone.jpg", "conversations": GOOD}, "crash"),
    "a text-only sample with <image> first: the blank image": ({"conversations": GOOD}, "degrades"),
    "<image> in the answer too": (
        {"image": "00000/1.jpg", "conversations": chat(("human", "<image>"), ("gpt", "a <image>"))},
        "crash",
    ),
    "a second value that is null": (
        {"image": "00000/1.jpg", "conversations": chat(("human", "<image>"), ("gpt", None))},
        "crash",
    ),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("playground")
    jpeg = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 10, 10)).save(jpeg, format="JPEG")
    for rel, data in (("coco/a.jpg", jpeg.getvalue()), ("coco/cut.jpg", jpeg.getvalue()[:300])):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "00000").mkdir()
    (root / "00000/1.jpg").write_bytes(jpeg.getvalue())
    return root


def check_verdict(sample, folder, contract) -> str:
    check = Check(contract=contract)
    check.check_file("train.json", io.BytesIO(json.dumps([sample]).encode()), folder_resolver(folder))
    report = check.as_report()
    if report["ready"]:
        return "ok"
    fired = {f["effect"] for f in report["findings"].values() if f["count"]}
    return "crash" if "crash" in fired else "degrades"


@pytest.mark.parametrize("case", list(V1_CASES))
def test_v1_verdicts_equal_llavas_own_reading(case, folder):
    sample, expected = V1_CASES[case]
    assert llava_reads(copy.deepcopy(sample), str(folder), "v1") == expected
    assert check_verdict(sample, folder, LLAVA_V1) == expected


@pytest.mark.parametrize("case", list(PLAIN_CASES))
def test_plain_verdicts_equal_llavas_own_reading(case, folder):
    sample, expected = PLAIN_CASES[case]
    assert llava_reads(copy.deepcopy(sample), str(folder), "plain") == expected
    assert check_verdict(sample, folder, LLAVA_PLAIN) == expected


def test_text_only_samples_are_counted_apart_and_need_no_image(folder):
    check = Check(contract=LLAVA_V1)
    samples = [V1_CASES["an image sample"][0], V1_CASES["a text-only sample"][0]] * 3
    check.check_file("mix.json", io.BytesIO(json.dumps(samples).encode()), folder_resolver(folder))
    report = check.as_report()
    assert (report["ready"], report["samples"], report["text_only"], report["referenced"]) == (True, 6, 3, 3)
    assert report["contract"] == "llava-v1" and "boxes" not in report["note"]


def test_a_finding_names_the_sample_by_its_id_and_the_rule_cites_llavas_line(folder):
    check = Check(contract=LLAVA_V1)
    bad = {"id": "000000033471", "conversations": chat(("user", "hi"), ("gpt", "hello"))}
    check.check_file("mix.json", io.BytesIO(json.dumps([bad]).encode()), folder_resolver(folder))
    finding = check.as_report()["findings"]["role_invalid"]
    assert finding["first"] == ["000000033471"] and finding["trainer"].startswith("llava/train/train.py:425")


def test_every_contract_is_registered_by_name_and_cites_its_trainer():
    assert set(CONTRACTS) == {"mgllava", "llava-plain", "llava-v1"}
    for name, contract in CONTRACTS.items():
        assert contract.name == name and "@" in contract.trainer
        assert all(effect in ("crash", "degrades", "dropped") for effect, _, _ in contract.rules.values())
