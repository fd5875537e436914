"""MG-LLaVA's reading contract (PhoenixZ810/MG-LLaVA @ 3237152, with xtuner's LLaVA dataset code it builds on).

`MGLLaVADataset` over xtuner's `LLaVADataset`: `json.load`, a Hugging Face `Dataset` built from the samples (its
columns from the first one), `llava_map_fn` and a filter on the conversations, then per sample
`Image.open(os.path.join(image_folder, image)).convert('RGB')` and a lookup of `str(id)` in the bbox JSON. Each way
that code crashes or silently trains on less is a rule; the line it follows is in the rule's third field.
"""

from __future__ import annotations

from mgdata.contracts.base import IMAGE_TOKEN, ROLES, Contract, Rules, Sample

RULES: Rules = {
    "sample_not_object": (
        "crash",
        "samples that are not JSON objects",
        "mg_llava/dataset/llava.py:55 item.keys()",
    ),
    "id_missing": (
        "crash",
        "samples without an id",
        "mg_llava/dataset/llava.py:74 json_data[idx]['id'] (KeyError)",
    ),
    "id_types_mixed": (
        "crash",
        "samples whose id type differs from the first sample's (after int -> str)",
        "mg_llava/dataset/llava.py:74-76 HFDataset.from_list (ArrowTypeError)",
    ),
    "image_not_string": (
        "crash",
        "samples whose image is not a string (a list, a number)",
        "mg_llava/dataset/llava.py:76 HFDataset.from_list (ArrowTypeError)",
    ),
    "conversations_invalid": (
        "crash",
        "samples whose conversations is missing or not a list of {from, value} turns with string values",
        "xtuner llava_map_fn (KeyError / TypeError)",
    ),
    "role_invalid": (
        "crash",
        "samples with a turn whose from is not human or gpt",
        "xtuner llava_map_fn.py:44-45 (NotImplementedError)",
    ),
    "image_tokens": (
        "crash",
        "samples with a turn whose input holds more than one <image>",
        "xtuner dataset/utils.py encode_fn: assert len(chunk_encode) == 2",
    ),
    "image_column_dropped": (
        "degrades",
        "image samples trained without their image: the file's first sample has no image key",
        "datasets Dataset.from_list takes the columns from mapping[0] (mg_llava/dataset/llava.py:76)",
    ),
    "image_missing": (
        "crash",
        "image references not under data/",
        "mg_llava/module/mg_llava_dataset.py:68 Image.open(os.path.join(image_folder, image))",
    ),
    "image_skipped": (
        "crash",
        "image references whose archive member was skipped at extraction",
        "mg_llava/module/mg_llava_dataset.py:68",
    ),
    "image_broken": (
        "crash",
        "image references that Pillow (defaults) cannot open and convert('RGB')",
        "mg_llava/module/mg_llava_dataset.py:68 .convert('RGB')",
    ),
    "boxes_missing": (
        "crash",
        "image samples whose id has no entry in the bbox JSON",
        "mg_llava/module/mg_llava_dataset.py:42,71 json_data[data_dict['id']] (KeyError)",
    ),
    "boxes_malformed": (
        "crash",
        "image samples whose bbox entry is not {boxes: rows of 4, scores and labels: lists of one per box}",
        "mg_llava/module/mg_llava_dataset.py:72-79 (KeyError), mg_llava/dataset/utils.py:562-565 reshape(-1, 4), "
        "batched_nms (one box per score)",
    ),
    "box_coordinates_invalid": (
        "crash",
        "image samples whose boxes hold a coordinate torch.tensor cannot take (a string, null, list or object)",
        "mg_llava/dataset/utils.py:722,725 box[1] + delta; :562 torch.tensor(boxes) (a bool is 0/1 and passes)",
    ),
    "box_labels_unhashable": (
        "crash",
        "image samples whose bbox labels hold a value that cannot be hashed (a list or an object)",
        "mg_llava/dataset/utils.py:559 set(labels) (TypeError: unhashable type)",
    ),
    "box_scores_invalid": (
        "crash",
        "image samples whose bbox scores hold a value torch.tensor cannot take (a string, null, list or object)",
        "mg_llava/dataset/utils.py:563 torch.tensor(scores)",
    ),
    "box_scores_not_float": (
        "crash",
        "image samples whose bbox scores are all whole numbers or bools, so torch.tensor makes them int64 or bool",
        "mg_llava/dataset/utils.py:565 batched_nms(boxes.float(), scores, ...): torchvision nms_kernel.cpp "
        "'dets should have the same type as scores'",
    ),
    "box_entry_without_id": (
        "crash",
        "bbox JSON list entries without an id",
        "mg_llava/module/mg_llava_dataset.py:42 str(item['id'])",
    ),
    "dropped_before_reading": (
        "dropped",
        "samples with no human->gpt turn, filtered out before any image is read (image and boxes not required)",
        "xtuner dataset/huggingface.py:61-63 filter(len(example['conversation']) > 0)",
    ),
}


def read_sample(raw: object) -> Sample:
    if not isinstance(raw, dict):
        return Sample(None, None, None, ["sample_not_object"], True, True)
    problems = []
    if "id" in raw:
        key = str(raw["id"]) if isinstance(raw["id"], int) else raw["id"]
        id_type = None if key is None else type(key).__name__  # null fits any column type
    else:
        key, id_type = None, None
        problems.append("id_missing")
    image = raw.get("image")
    if image and not isinstance(image, str):
        problems.append("image_not_string")
    tokens, conv_problem = _turns(raw.get("conversations"))
    if conv_problem:
        problems.append(conv_problem)
        return Sample(key, id_type, image, problems, False, not image)
    if tokens and max(tokens) > 1:
        problems.append("image_tokens")
    return Sample(key, id_type, image, problems, not tokens, not image)


def _turns(messages: object) -> tuple[list[int] | None, str | None]:
    """llava_map_fn: for each human->gpt turn, how many `<image>` its input holds (llava_map_fn removes every
    `<image>` of a human message and puts one back in front, so one per human message that has any), or a rule."""
    if not isinstance(messages, list):
        return None, "conversations_invalid"
    for m in messages:
        if not isinstance(m, dict):
            return None, "conversations_invalid"
    start = 0
    while start < len(messages) and messages[start].get("from") == "gpt":
        start += 1
    tokens, current = [], 0
    for m in messages[start:] if start else messages:
        role = m.get("from")
        if role not in ROLES:
            return None, "role_invalid"
        value = m.get("value")
        if not isinstance(value, str):
            return None, "conversations_invalid"
        if role == "human":
            current += IMAGE_TOKEN in value
        else:
            tokens.append(current)
            current = 0
    return tokens, None


def image_column_kept(first: object) -> bool:
    """Whether the first sample gives the Dataset an `image` column (mg_llava/dataset/llava.py:54-70, 76)."""
    if not isinstance(first, dict):
        return False
    return "image" in first or bool(first.get("video")) or "model" in first


MGLLAVA = Contract(
    name="mgllava",
    trainer="PhoenixZ810/MG-LLaVA @ 3237152: mg_llava/module/mg_llava_dataset.py, mg_llava/dataset/llava.py (xtuner)",
    rules=RULES,
    read_sample=read_sample,
    image_column_kept=image_column_kept,
    boxes=True,
)
