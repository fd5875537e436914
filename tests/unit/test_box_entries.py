"""The bbox JSON entry rules (`annotations._box_problem`), each class of field value on both sides of the line the
trainer draws: MGLLaVADataset.__getitem__ (PhoenixZ810/MG-LLaVA @ 3237152, `mg_llava/module/mg_llava_dataset.py`)
hands an entry's fields to `adjust_padding_boxes` and `bbox_nms` (`mg_llava/dataset/utils.py`), which call
`set(labels)`, `torch.tensor(boxes)`, `torch.tensor(scores)` and torchvision's `batched_nms`."""

from __future__ import annotations

import pytest

from mgdata.annotations import _box_problem

GOOD = {"boxes": [[1, 2, 30.5, 40]], "scores": [0.9], "labels": ["cat"]}


def rule_of(entry: dict) -> str | None:
    problem = _box_problem(entry)
    return None if problem is None else problem[0]


def test_a_well_formed_entry_passes():
    assert _box_problem(GOOD) is None
    assert _box_problem({"boxes": [], "scores": [], "labels": []}) is None


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ([1, 2], "entry is not an object"),
        ({"boxes": [[1, 2, 3, 4]], "labels": ["a"]}, "no scores"),
        ({**GOOD, "boxes": [[1, 2, 3]]}, "boxes are not rows of 4 numbers"),
        ({**GOOD, "boxes": [(1, 2, 3, 4)]}, "boxes are not rows of 4 numbers"),
        ({**GOOD, "boxes": {"a": [1, 2, 3, 4]}}, "boxes are not rows of 4 numbers"),
        ({**GOOD, "scores": [0.5, 0.4]}, "2 scores for 1 boxes"),
        ({**GOOD, "scores": 0.5}, "no list of scores for 1 boxes"),
        ({**GOOD, "labels": []}, "0 labels for 1 boxes"),
        ({**GOOD, "labels": "cat"}, "no list of labels for 1 boxes"),
    ],
)
def test_an_entry_of_the_wrong_shape_is_malformed(entry, reason):
    """mg_llava_dataset.py:72-74 `box_data['boxes']` (KeyError); utils.py:562 `reshape(-1, 4)` and
    torchvision's nms kernel ("boxes and scores should have same number of elements")."""
    assert _box_problem(entry) == ("boxes_malformed", reason)


@pytest.mark.parametrize("label", [["cat"], {"name": "cat"}, [["nested"]], []])
def test_a_label_that_cannot_be_hashed_is_not_ready(label):
    """utils.py:559 `set(labels)` raises TypeError: unhashable type: 'list' (or 'dict')."""
    rule, reason = _box_problem({**GOOD, "labels": [label]})
    assert rule == "box_labels_unhashable"
    assert "labels[0]" in reason and "set(labels)" in reason


@pytest.mark.parametrize("label", ["cat", "", 7, 2.5, None, True])
def test_any_hashable_label_is_ready(label):
    """utils.py:559-561 `set(labels)` and the index lookups take any hashable value; the labels are only keys
    after that (mg_llava_dataset.py:113 `label_indices[label]`), never tensors."""
    assert _box_problem({**GOOD, "labels": [label]}) is None


@pytest.mark.parametrize("value", ["4", "x", None, [4], {"v": 4}])
def test_a_coordinate_torch_cannot_take_is_not_ready(value):
    """utils.py:722 `box[1] + delta` and :562 `torch.tensor(boxes)`: a string, null, list or object fails."""
    rule, reason = _box_problem({**GOOD, "boxes": [[1, 2, 3, 4], [1, 2, 3, value]], "scores": [0.5, 0.5],
                                 "labels": ["a", "b"]})  # fmt: skip
    assert rule == "box_coordinates_invalid"
    assert reason.startswith("boxes[1][3] is ")


@pytest.mark.parametrize("value", [True, False, 0, -3, 1e9, 2.5])
def test_a_bool_or_any_number_is_a_coordinate(value):
    """utils.py:722 `box[1] + delta` and :562 `torch.tensor(boxes)`: a bool is the number 0 or 1 to both."""
    assert _box_problem({**GOOD, "boxes": [[value, value, 3, 4]]}) is None


@pytest.mark.parametrize("value", ["0.9", "high", None, [0.9], {"s": 0.9}])
def test_a_score_torch_cannot_take_is_not_ready(value):
    """utils.py:563 `torch.tensor(scores)`: a numeric string, null, list or object fails."""
    rule, reason = _box_problem({**GOOD, "scores": [value]})
    assert rule == "box_scores_invalid"
    assert reason.startswith("scores[0] is ")


@pytest.mark.parametrize("scores", [[1], [1, 0], [True], [False, True], [1, True]])
def test_scores_without_a_fractional_number_are_not_ready(scores):
    """utils.py:563-565: `torch.tensor` makes whole numbers int64 (bools alone: bool), and `batched_nms`
    (torchvision csrc/ops/cpu/nms_kernel.cpp) refuses scores whose dtype is not the float32 of `boxes.float()`."""
    n = len(scores)
    entry = {"boxes": [[1, 2, 3, 4]] * n, "scores": scores, "labels": ["a"] * n}
    assert rule_of(entry) == "box_scores_not_float"


@pytest.mark.parametrize("scores", [[0.5], [1.0], [1, 0.5], [True, 0.25], [0.0, 0, False]])
def test_scores_with_one_fractional_number_are_float32_and_ready(scores):
    """utils.py:563: one Python float among the values makes `torch.tensor(scores)` float32, as the boxes are."""
    n = len(scores)
    assert _box_problem({"boxes": [[1, 2, 3, 4]] * n, "scores": scores, "labels": ["a"] * n}) is None


def test_no_boxes_need_no_float_scores():
    """torchvision's batched_nms returns before nms for zero boxes, so an empty entry is never type-checked."""
    assert _box_problem({"boxes": [], "scores": [], "labels": []}) is None
