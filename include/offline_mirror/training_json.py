"""MG-LLaVA's training and bbox JSONs for the sample mirror, in the shapes of the real files, citing every replica.

Built after every other replica, from the images each one really delivers (valid members of the zip and tar replicas,
the OCR-VQA covers whose URLs answer with an image), so the mirror's ready-to-train verdict is the truth about the
mirror: a source that is skipped (DocVQA without its archive) leaves its cited images missing.

- the pretrain JSON (`pretrain_blip_allava_1266k.json`) cites LLaVA-Pretrain and ALLaVA-LAION;
- the instruct JSON (`instruct_llava_allava_doc_dvqa_share_ai2d_1383k.json`) cites every layout prefix the real
  1383K JSON does (`INSTRUCT_PREFIXES`);
- samples are LLaVA's `{id, image?, conversations: [{from: human|gpt, value}]}` with one `<image>` in the first human
  turn (before or after the text), single and multi-turn, text-only samples in between (never first), int and str
  ids, and one id repeated with another conversation (MG-LLaVA #1);
- bbox JSONs are lists of `{id, boxes: [[x1, y1, x2, y2], ...], scores, labels}`, one entry per image sample id.
"""

from __future__ import annotations

import json
import random
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

PRETRAIN_JSON = "pretrain_blip_allava_1266k.json"
INSTRUCT_JSON = "instruct_llava_allava_doc_dvqa_share_ai2d_1383k.json"
PRETRAIN_PREFIXES = ("LLaVA-Pretrain/images", "allava_laion/images")
LLAVA_MIX_PREFIXES = (
    "coco/train2017",
    "gqa/images",
    "ocr_vqa/images",
    "textvqa/train_images",
    "vg/VG_100K",
    "vg/VG_100K_2",
)
INSTRUCT_PREFIXES = (  # LLaVA-1.5's mix is the first part of MG-LLaVA's instruct JSON
    *LLAVA_MIX_PREFIXES,
    "allava_laion/images",
    "allava_vflan/images",
    "docvqa/images",
    "dvqa/images",
    "share_textvqa/images",
    "web-celebrity/images",
    "web-landmark/images",
    "wikiart/images",
    "ai2d/images",
)
_QUESTIONS = (
    "What is written at the top?",
    "How many objects are there?",
    "What colour is the largest object?",
    "Describe the image briefly.",
)


def box_json_name(training_json: str) -> str:
    return training_json.removesuffix(".json") + "_only_box.json"


def _prefix(path: str) -> str:
    return "/".join(path.split("/")[:2])


def valid_image_paths(root: Path, replicas: list, catalog) -> dict[str, list[str]]:
    """The data/ paths each replica delivers as usable images, by layout prefix (`vg/VG_100K_2`)."""
    from offline_mirror.web_replicas import WEB_JSON, cover_outcome

    out: dict[str, list[str]] = {}
    for r in replicas:
        source = catalog.sources.get(r.source)
        files = [f for f in (source.files if source else []) if f.name == r.name]
        if not files:
            continue
        f, path, bad = files[0], Path(root) / r.relpath, set(r.broken_members)
        if f.archive == "zip" and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        elif f.archive in ("tar", "tar.gz") and path.is_file():
            with tarfile.open(path) as archive:
                names = [m.name for m in archive.getmembers() if m.isfile()]
        elif f.archive == "urllist" and (Path(root) / WEB_JSON).is_file():
            covers = json.loads((Path(root) / WEB_JSON).read_text())["covers"]
            names = [i for i, c in covers.items() if cover_outcome(c["behaviour"]) in ("ok", "normalized")]
            for i in sorted(names):
                out.setdefault(_prefix(f"{f.target}/{i}.jpg"), []).append(f"{f.target}/{i}.jpg")
            continue
        else:
            continue
        for name in names:
            target = f.map_member(name)
            if target and name not in bad:
                out.setdefault(_prefix(target), []).append(target)
    return {p: sorted(v) for p, v in out.items()}


DOCVQA_IMAGES = "docvqa/images"


CAPTIONS = (
    "a red bicycle leaning against a brick wall",
    "two dogs playing in the snow",
    "a plate of pasta with basil on a wooden table",
    "the skyline of a city at dusk",
    "an old lighthouse on a rocky shore",
)
LABELS = ("person", "dog", "car", "tree", "building", "sign", "table", "cup", "text", "chart")


def caption_conversation(rng: random.Random, *, image: bool) -> list[dict]:
    """One human/gpt exchange: a caption request for an image sample, a haiku for a text-only one."""
    caption = rng.choice(CAPTIONS)
    prompt = "Describe the image briefly." if image else "Write a haiku about the sea."
    return [
        {"from": "human", "value": ("<image>\n" if image else "") + prompt},
        {
            "from": "gpt",
            "value": caption
            if image
            else "Waves fold into foam / salt wind carries gull voices / the tide keeps its time",
        },
    ]


def box_entry(rng: random.Random, sample_id: str) -> dict:
    """One bbox JSON entry as MG-LLaVA's trainer reads it: 1-4 boxes of 4 numbers, a score and a label each."""
    n = rng.randint(1, 4)
    boxes = []
    for _ in range(n):
        x, y = rng.randrange(0, 300), rng.randrange(0, 200)
        boxes.append([x, y, x + rng.randint(20, 200), y + rng.randint(20, 200)])
    return {
        "id": sample_id,
        "boxes": boxes,
        "scores": [round(rng.uniform(0.2, 0.95), 3) for _ in range(n)],
        "labels": [rng.choice(LABELS) for _ in range(n)],
    }


def docvqa_stand_in(root: Path, catalog, *, images: int, seed: int) -> tuple[str, list[str]]:
    """DocVQA registers its users, so no mirror serves it: build the archive a registered user downloads (at its URL
    path under `root`, never in the mirror's catalog) for the demo's inbox step. Returns (its path under `root`, the
    data/ paths of its documents, which the instruct JSON cites)."""
    from offline_mirror.web_replicas import build_docvqa

    replica = build_docvqa(root, images=images, seed=seed)
    return replica.relpath, valid_image_paths(root, [replica], catalog).get(DOCVQA_IMAGES, [])


def _conversation(rng: random.Random, *, image: bool, turns: int) -> list[dict]:
    out = []
    for turn in range(turns):
        question = rng.choice(_QUESTIONS) if image else "Write a haiku about the sea."
        if image and turn == 0:
            question = f"<image>\n{question}" if rng.random() < 0.7 else f"{question}\n<image>"
        out.append({"from": "human", "value": question})
        out.append({"from": "gpt", "value": rng.choice(CAPTIONS) if image else "Waves fold into foam."})
    return out


def _samples(paths: list[str], rng: random.Random, tag: str) -> list[dict]:
    out: list[dict] = []
    for i, path in enumerate(paths):
        # about a third of the ids are ints, as in LLaVA's mixes (the trainer turns ints into str)
        sample_id: int | str = 10_000_000 + i if i % 3 == 1 else f"{tag}_{i:06d}"
        out.append(
            {"id": sample_id, "image": path, "conversations": _conversation(rng, image=True, turns=1 + i % 2)}
        )
        if i % 7 == 3:  # text-only samples between image samples, never first
            out.append(
                {"id": f"{tag}_text_{i:06d}", "conversations": _conversation(rng, image=False, turns=1)}
            )
    if out:  # the same id for the same image with another conversation (MG-LLaVA #1): not a duplicate entry
        out.append({**out[0], "conversations": _conversation(rng, image=True, turns=1)})
    return out


def _boxes(samples: list[dict], rng: random.Random) -> list[dict]:
    by_id = {s["id"]: box_entry(rng, s["id"]) for s in samples if "image" in s}
    return list(by_id.values())


@dataclass
class TrainingJsons:
    pretrain: list[dict]
    instruct: list[dict]

    def files(self, rng: random.Random) -> dict[str, bytes]:
        """Hub repo path -> bytes: `train_json/<name>` and `bbox_json/train/<name>_only_box.json`."""
        out = {}
        for name, samples in ((PRETRAIN_JSON, self.pretrain), (INSTRUCT_JSON, self.instruct)):
            out[f"train_json/{name}"] = json.dumps(samples).encode()
            out[f"bbox_json/train/{box_json_name(name)}"] = json.dumps(_boxes(samples, rng)).encode()
        return out


def build_training_jsons(
    paths: dict[str, list[str]], rng: random.Random, *, allava_share: int
) -> TrainingJsons:
    """`paths`: usable image paths by layout prefix; `allava_share`: ALLaVA images the instruct JSON cites per prefix
    (the pretrain JSON cites them all)."""
    pretrain = [p for prefix in PRETRAIN_PREFIXES for p in paths.get(prefix, [])]
    instruct = [
        p
        for prefix in INSTRUCT_PREFIXES
        for p in paths.get(prefix, [])[: allava_share if prefix.startswith("allava") else None]
    ]
    return TrainingJsons(_samples(pretrain, rng, "pretrain"), _samples(instruct, rng, "instruct"))


# --- the other recipes' JSONs (include/recipes/) ---------------------------------------------------------------------

# ShareGPT4V's SFT mix reads LLaVA-1.5's folders, SAM's SFT images and the web sets, and LLaVA-Pretrain's images under
# its own folder name (its docs/Data.md tree: data/llava/llava_pretrain/images).
SHAREGPT4V_PREFIXES = (
    *LLAVA_MIX_PREFIXES,
    "LLaVA-Pretrain/images",
    "sam/images",
    "share_textvqa/images",
    "web-celebrity/images",
    "web-landmark/images",
    "wikiart/images",
)
SHAREGPT4V_FOLDERS = {"LLaVA-Pretrain/images": "llava/llava_pretrain/images"}
ALLAVA_JSONS = {  # (folder, kind) -> the file's name in the Hub repo's folder
    ("allava_laion", "Caption"): "ALLaVA-Caption-LAION-4V.json",
    ("allava_laion", "Instruct"): "ALLaVA-Instruct-LAION-4V.json",
    ("allava_vflan", "Caption"): "ALLaVA-Caption-VFLAN-4V.json",
    ("allava_vflan", "Instruct"): "ALLaVA-Instruct-VFLAN-4V.json",
}
RECIPE_JSON_SOURCES = ("llava_instruct", "sharegpt4v_annotations", "allava_annotations")


def _renamed(path: str, folders: dict[str, str]) -> str:
    return next((new + path[len(old) :] for old, new in folders.items() if path.startswith(old + "/")), path)


def recipe_jsons(paths: dict[str, list[str]], rng: random.Random) -> dict[tuple[str, str], bytes]:
    """(catalog source, file name) -> bytes of the JSONs the other recipes read, in LLaVA's sample format over the
    images the mirror delivers (`paths`, by layout prefix): LLaVA-1.5's mix665k (its five sources, text-only samples
    between), ShareGPT4V's SFT mix (in its own folder names) and ALLaVA's caption and instruction JSONs, whose ids
    carry the set's name (`allava_laion_cap_100277305`)."""

    def cited(prefixes) -> list[str]:
        return [p for prefix in prefixes for p in paths.get(prefix, [])]

    mix = _samples(cited(LLAVA_MIX_PREFIXES), rng, "mix665k")
    share = _samples([_renamed(p, SHAREGPT4V_FOLDERS) for p in cited(SHAREGPT4V_PREFIXES)], rng, "sharegpt4v")
    out = {
        ("llava_instruct", "llava_v1_5_mix665k.json"): json.dumps(mix).encode(),
        ("sharegpt4v_annotations", "sharegpt4v_mix665k_cap23k_coco-ap9k_lcs3k_sam9k_div2k.json"): json.dumps(
            share
        ).encode(),
    }
    for (folder, kind), name in ALLAVA_JSONS.items():
        samples = []
        for i, path in enumerate(paths.get(f"{folder}/images", [])):
            stem = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
            conversations = (
                caption_conversation(rng, image=True)
                if kind == "Caption"
                else _conversation(rng, image=True, turns=1 + i % 3)
            )
            samples.append(
                {"id": f"{folder}_{kind.lower()[:4]}_{stem}", "image": path, "conversations": conversations}
            )
        out[("allava_annotations", name)] = json.dumps(samples).encode()
    return out
