"""LLaVA's reading contract: `LazySupervisedDataset` (haotian-liu/LLaVA @ c121f04, llava/train/train.py), the reader
of LLaVA-1.5 and of the forks that keep it line for line (ShareGPT4V's share4v/train/train.py @ b6f70e9).

How it reads a sample: `json.load` of the whole file (train.py:665); per sample, `'image' in sample` decides whether
an image is read (train.py:697: the key's presence, not its value), `Image.open(os.path.join(image_folder,
image)).convert('RGB')` reads it (train.py:701), `preprocess_multimodal` moves each message's `<image>` to its front
(train.py:316-327), and the conversation template's `preprocess_*` builds the prompt. Samples without `image` are
text-only and get a blank image (train.py:735-738). The model then takes one image feature per `<image>` token, in
batch order (llava/model/llava_arch.py:231-261). The sample's `id` is never read.

Two templates, as LLaVA-1.5's scripts run them (scripts/v1_5/pretrain.sh, finetune.sh; ShareGPT4V's slurm scripts
alike): `plain` for pretraining, and `v1` with `--group_by_modality_length True` for fine-tuning, whose sampler sums
every sample's words before the first step (train.py:683-690, llava/train/llava_trainer.py:62).
"""

from __future__ import annotations

from mgdata.contracts.base import IMAGE_TOKEN, ROLES, Contract, Rules, Sample

TRAIN = "llava/train/train.py"

_COMMON: Rules = {
    "sample_not_object": (
        "crash",
        "samples that are not JSON objects",
        f"{TRAIN}:687,720 sample['conversations'] (TypeError)",
    ),
    "conversations_invalid": (
        "crash",
        "samples whose conversations is missing or not a list of turns with a string value",
        f"{TRAIN}:318,433 sentence['value'] (KeyError / TypeError)",
    ),
    "image_not_string": (
        "crash",
        "samples with an image key whose value is not a string (null, a list, a number)",
        f"{TRAIN}:697-701 os.path.join(image_folder, image_file) (TypeError)",
    ),
    "image_missing": (
        "crash",
        "image references not in the image folder",
        f"{TRAIN}:701 Image.open(os.path.join(image_folder, image_file)) (FileNotFoundError)",
    ),
    "image_skipped": (
        "crash",
        "image references whose archive member was skipped at extraction",
        f"{TRAIN}:701",
    ),
    "image_broken": (
        "crash",
        "image references that Pillow (defaults) cannot open and convert('RGB')",
        f"{TRAIN}:701 .convert('RGB')",
    ),
}

PLAIN_RULES: Rules = {
    **_COMMON,
    "plain_turns": (
        "crash",
        "samples whose conversation is not exactly two messages",
        f"{TRAIN}:595 assert len(source) == 2",
    ),
    "plain_image_token": (
        "crash",
        "samples whose first message holds no <image>",
        f"{TRAIN}:596 assert DEFAULT_IMAGE_TOKEN in source[0]['value']",
    ),
    "image_tokens": (
        "crash",
        "samples whose second message holds an <image>: one image, two features taken",
        f"{TRAIN}:598,601 tokenizer_image_token over both messages; llava/model/llava_arch.py:256-261 "
        "image_features[cur_image_idx] (IndexError, or the next sample's image)",
    ),
    "text_only_image_token": (
        "degrades",
        "text-only samples (no image key) that pass the <image> assertion: trained on the blank image",
        f"{TRAIN}:735-738 torch.zeros(3, crop_size...); :601 tokenizer_image_token",
    ),
}

V1_RULES: Rules = {
    **_COMMON,
    "conversations_empty": (
        "crash",
        "samples with no message",
        f"{TRAIN}:425 source[0] (IndexError); llava/train/llava_trainer.py:62 'Should not have zero length.'",
    ),
    "role_invalid": (
        "crash",
        "samples with a message whose from is not human or gpt",
        f"{TRAIN}:425,431 roles[sentence['from']] (KeyError)",
    ),
    "roles_not_alternating": (
        "crash",
        "samples whose messages do not alternate human, gpt (after a leading gpt message, which is skipped)",
        f"{TRAIN}:432 assert role == conv.roles[j % 2]",
    ),
    "no_words": (
        "crash",
        "samples whose messages hold no word at all: zero length for the modality-grouped sampler",
        f"{TRAIN}:687 len(conv['value'].split()); llava/train/llava_trainer.py:62 assert all(l != 0 ...)",
    ),
    "image_tokens": (
        "crash",
        "image samples with <image> in more than one message: one image, several features taken",
        f"{TRAIN}:316-327 one <image> per message; llava/model/llava_arch.py:256-261 image_features[cur_image_idx] "
        "(IndexError, or the next sample's image)",
    ),
    "image_token_absent": (
        "degrades",
        "image samples with no <image> in any message: the image is read, then dropped",
        "llava/model/llava_arch.py:234-240 cur_image_features[0:0]",
    ),
}


def _messages(raw: dict) -> list[dict] | None:
    """The conversation when every message is an object with a string value, else None."""
    messages = raw.get("conversations")
    if not isinstance(messages, list):
        return None
    if not all(isinstance(m, dict) and isinstance(m.get("value"), str) for m in messages):
        return None
    return messages


def _start(raw: object) -> tuple[Sample, list[dict] | None]:
    """The rules every template shares, and the sample's messages (None when it cannot be read further)."""
    if not isinstance(raw, dict):
        return Sample(None, None, None, ["sample_not_object"], False, True), None
    text_only = "image" not in raw
    image = raw.get("image")
    key = raw.get("id")  # never read by the trainer: only to name the sample in the findings
    sample = Sample(key, None if key is None else type(key).__name__, image, [], False, text_only)
    if not text_only and not isinstance(image, str):
        sample.problems.append("image_not_string")
    messages = _messages(raw)
    if messages is None:
        sample.problems.append("conversations_invalid")
    return sample, messages


def read_plain(raw: object) -> Sample:
    """`preprocess_plain` (train.py:588-607): two messages, the first holding <image>."""
    sample, messages = _start(raw)
    if messages is None:
        return sample
    if len(messages) != 2:
        sample.problems.append("plain_turns")
    elif IMAGE_TOKEN not in messages[0]["value"]:
        sample.problems.append("plain_image_token")
    elif IMAGE_TOKEN in messages[1]["value"]:
        sample.problems.append(
            "image_tokens"
        )  # every prompt goes through tokenizer_image_token (train.py:601)
    elif sample.text_only:
        sample.problems.append("text_only_image_token")
    return sample


def read_v1(raw: object) -> Sample:
    """`preprocess_v1` (train.py:414-434) under the modality-grouped sampler (train.py:683-690)."""
    sample, messages = _start(raw)
    if messages is None:
        return sample
    problem = _v1_roles(messages)
    if problem:
        sample.problems.append(problem)
    elif not any(m["value"].split() for m in messages):
        sample.problems.append("no_words")
    if sample.text_only:  # tokenized without tokenizer_image_token (train.py:438-447): <image> is plain text
        return sample
    tokens = sum(IMAGE_TOKEN in m["value"] for m in messages)
    if tokens > 1:
        sample.problems.append("image_tokens")
    elif not tokens:
        sample.problems.append("image_token_absent")
    return sample


def _v1_roles(messages: list[dict]) -> str | None:
    if not messages:
        return "conversations_empty"
    if any(m.get("from") not in ROLES for m in messages):
        return "role_invalid"
    if messages[0]["from"] != "human":
        messages = messages[1:]
    if any(m["from"] != ROLES[j % 2] for j, m in enumerate(messages)):
        return "roles_not_alternating"
    return None


_TRAINER = "haotian-liu/LLaVA @ c121f04: llava/train/train.py LazySupervisedDataset"
LLAVA_PLAIN = Contract(
    name="llava-plain", trainer=_TRAINER + " (--version plain)", rules=PLAIN_RULES, read_sample=read_plain
)
LLAVA_V1 = Contract(
    name="llava-v1",
    trainer=_TRAINER + " (--version v1 --group_by_modality_length True)",
    rules=V1_RULES,
    read_sample=read_v1,
)
