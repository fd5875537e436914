"""The run report's human page (`report.html`) prints the materialised trees as a table, not as a Python dict."""

from __future__ import annotations

import re

from mgdata.report import render_html


def report(layout: dict | None) -> dict:
    return {
        "run_id": "manual__2026-12-01T10:00:00+00:00",
        "status": "success",
        "store": "file:///srv/store",
        "sources": {},
        "totals": {"images_ok": 0, "images_normalized": 0, "bytes_fetched": 0},
        "layout": layout,
        "quarantine": [],
        "quarantine_total": 0,
    }


def test_layout_is_a_table():
    layout = {
        "root": "/srv/mg/data",
        "files": 1234,
        "removed": 2,
        "linked": 1200,
        "unchanged": 34,
        "annotations": {"root": "/srv/mg/annotations", "files": 5, "linked": 5},
    }
    page = render_html(report(layout))
    table = re.search(r"<table id='layout'>.*?</table>", page, re.S).group(0)
    cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<t[dh][^>]*>.*?</t[dh]>", table)]
    header = ["tree", "root", "files", "linked", "copied", "downloaded", "unchanged", "removed"]
    assert cells[:8] == header
    assert cells[8:16] == ["data/", "/srv/mg/data", "1,234", "1,200", "0", "0", "34", "2"]
    assert cells[16:] == ["annotations/", "/srv/mg/annotations", "5", "5", "0", "0", "0", "0"]
    assert "{" not in page.split("<h2>data/ layout</h2>")[1].split("<h2>")[0], "no dict printed"


def test_no_layout_says_how_to_get_one():
    assert "not materialised (set MGDATA_LAYOUT_DIR)" in render_html(report(None))
