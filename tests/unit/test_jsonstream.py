"""The streaming JSON reader gives what `json.load` gives (the trainer's reader), and refuses what it refuses, wherever
the chunks it reads happen to end."""

from __future__ import annotations

import io
import json
import random

import pytest

from mgdata import jsonstream
from mgdata.jsonstream import StreamError, array_items, object_items

ACCEPTED = [
    b"[]",
    b"[  ]",
    b" [1]\n\n",
    b"[\r\n\t1 ,\n2 ,3]",
    b"[NaN, Infinity, -Infinity]",
    b'["\\ud800", "\\u0000", "\\/", "\xc3\xa9", "a\x7fb"]',
    b"[-0, 1E5, 1e400, 2.5, 1e-7, 123456789012345678901234567890]",
    b'[{"a": 1, "a": 2}]',
    b'[true, false, null, {}, [], {"a" : [1 , {"b":[]}]}]',
]
REFUSED = [
    b'["\xff"]',  # not UTF-8
    b'["\xed\xa0\x80"]',  # a surrogate encoded in UTF-8
    b'["a\x01b"]',  # a control character in a string
    b"[1] x",
    b"[1]]",
    b"[1][2]",
    b"[1,]",
    b"[,1]",
    b"[01]",
    b"[1.]",
    b"[1 2]",
    b"[1",
    b'[{"a":1}',
    b"[tru]",
    b"[\x0c1]",  # a form feed is not JSON whitespace
    b"[" + b"[" * 5000 + b"]" * 5000 + b"]",
]


@pytest.mark.parametrize("text", ACCEPTED)
def test_what_json_load_accepts_reads_the_same(text):
    assert repr(list(array_items(io.BytesIO(text)))) == repr(json.loads(text.decode()))


@pytest.mark.parametrize("text", REFUSED)
def test_what_json_load_refuses_is_refused(text):
    with pytest.raises((ValueError, RecursionError)):  # json.load's own refusal
        json.loads(text.decode())
    with pytest.raises(StreamError):
        list(array_items(io.BytesIO(text)))


def test_objects_keep_every_member_in_order_and_refuse_what_json_refuses():
    assert list(object_items(io.BytesIO(b'{"a": 1, "b": [2], "a": 3}'))) == [("a", 1), ("b", [2]), ("a", 3)]
    assert list(object_items(io.BytesIO(b" {} "))) == []
    for bad in (b'{"a": 1,}', b"{1: 2}", b'{"a" 1}', b'{"a": 1} x'):
        with pytest.raises(StreamError):
            list(object_items(io.BytesIO(bad)))


def test_any_chunk_boundary_gives_the_same_values(monkeypatch):
    """Read 7 bytes at a time, every value (numbers split after `1.` or `1e` above all) crosses chunk ends."""
    monkeypatch.setattr(jsonstream, "CHUNK", 7)
    rng = random.Random(7)
    values = [
        1,
        2.5,
        -3e5,
        'x,]"}é',
        {"a": [1, {"b": "c"}], "id": 12345678901},
        [],
        None,
        True,
        1e-7,
        123456789,
    ]
    for _ in range(200):
        items = [rng.choice(values) for _ in range(rng.randint(0, 30))]
        text = json.dumps(items, indent=rng.choice([None, 1]), ensure_ascii=rng.random() < 0.5)
        assert repr(list(array_items(io.BytesIO(text.encode())))) == repr(json.loads(text))
        members = {f"k{i}": v for i, v in enumerate(items)}
        text = json.dumps(members, indent=rng.choice([None, 2]), ensure_ascii=False)
        assert repr(dict(object_items(io.BytesIO(text.encode())))) == repr(json.loads(text))


def test_the_error_says_where():
    with pytest.raises(StreamError, match="expecting ',' or ']' at character 8"):
        list(array_items(io.BytesIO(b'[{"a":1}')))
