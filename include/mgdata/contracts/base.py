"""What every trainer contract is made of: the rules it can fire and how it reads one sample."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

IMAGE_TOKEN = "<image>"
ROLES = ("human", "gpt")

# rule -> (effect, what it counts, where the trainer does it). effect: "crash" (the trainer raises), "degrades" (it
# trains on without the images, silently), "dropped" (the trainer filters the sample out before reading: not required).
Rules = dict[str, tuple[str, str, str]]


@dataclass(slots=True)
class Sample:
    """What the check needs of one training sample, as the trainer will see it."""

    key: object  # the id as the trainer keys it (MG-LLaVA: after int -> str), None when it has none
    id_type: str | None  # None: no id at all
    image: object  # the raw `image` value
    problems: list[str]  # crash rules found in the sample itself
    dropped: bool  # filtered out by the trainer before reading
    text_only: bool  # the trainer reads no image for it

    @property
    def label(self) -> str:
        return repr(self.key) if not isinstance(self.key, str) else self.key


@dataclass(frozen=True)
class Contract:
    """One trainer's reading of a training JSON.

    `read_sample` turns one JSON sample into a `Sample` with the rules it breaks by itself; the engine
    (`mgdata.annotations.Check`) adds the rules about files: images missing or undecodable, boxes, the first sample.
    """

    name: str
    trainer: str  # the code it follows: repository, file and commit
    rules: Rules
    read_sample: Callable[[object], Sample]
    # MG-LLaVA's Hugging Face Dataset takes its columns from the first sample: whether it keeps `image` (None: the
    # trainer reads each sample as it is)
    image_column_kept: Callable[[object], bool] | None = None
    boxes: bool = False  # every image sample needs an entry in a bbox JSON
