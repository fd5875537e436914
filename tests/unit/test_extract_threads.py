"""MGDATA_EXTRACT_THREADS sets the threads of every extract task; a bad value is an error naming the variable."""

from __future__ import annotations

import os

import pytest

from mgdata.extract import extract_threads


def test_default_is_twice_the_cores(monkeypatch):
    monkeypatch.delenv("MGDATA_EXTRACT_THREADS", raising=False)
    assert extract_threads() == max(2, (os.cpu_count() or 2) * 2)


def test_the_variable_sets_it(monkeypatch):
    monkeypatch.setenv("MGDATA_EXTRACT_THREADS", "3")
    assert extract_threads() == 3


def test_a_bad_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("MGDATA_EXTRACT_THREADS", "many")
    with pytest.raises(ValueError, match="MGDATA_EXTRACT_THREADS must be a whole number"):
        extract_threads()
