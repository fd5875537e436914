"""The bbox JSON entry rules (`annotations._box_problem`): what MG-LLaVA's bbox_nms / adjust_padding_boxes need of an
entry, checked per entry of 1.3M-entry files."""

from __future__ import annotations

import pytest

from mgdata.annotations import _box_problem

GOOD = {"boxes": [[1, 2, 30.5, 40]], "scores": [0.9], "labels": ["cat"]}


def test_a_well_formed_entry_passes():
    assert _box_problem(GOOD) is None
    assert _box_problem({"boxes": [], "scores": [], "labels": []}) is None


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ([1, 2], "entry is not an object"),
        ({"boxes": [[1, 2, 3, 4]], "labels": ["a"]}, "no scores"),
        ({**GOOD, "boxes": [[1, 2, 3]]}, "boxes are not rows of 4 numbers"),
        (
            {**GOOD, "boxes": [[1, 2, 3, True]]},
            "boxes are not rows of 4 numbers",
        ),  # a bool is not a coordinate
        ({**GOOD, "boxes": [[1, 2, 3, "4"]]}, "boxes are not rows of 4 numbers"),
        ({**GOOD, "boxes": [(1, 2, 3, 4)]}, "boxes are not rows of 4 numbers"),
        ({**GOOD, "boxes": {"a": [1, 2, 3, 4]}}, "boxes are not rows of 4 numbers"),
        ({**GOOD, "scores": [False]}, "1 scores for 1 boxes"),
        ({**GOOD, "scores": [0.5, 0.4]}, "2 scores for 1 boxes"),
        ({**GOOD, "scores": 0.5}, "no list of scores for 1 boxes"),
        ({**GOOD, "labels": []}, "0 labels for 1 boxes"),
    ],
)
def test_a_malformed_entry_is_named(entry, problem):
    assert _box_problem(entry) == problem
