"""The docs describe the code as it is: generated reference pages are current, the settings table names exactly the
variables the code reads, and no page, docstring or comment tells the project's history instead of what it does."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import docs_reference  # noqa: E402

from mgdata.settings import VARIABLES  # noqa: E402

READERS = {("os", "environ", "get"), ("os", "getenv"), ("env_int",), ("os", "environ")}
NAMED = re.compile(r"(MGDATA_|HF_|AWS_ENDPOINT)")


def test_generated_reference_pages_are_current():
    stale = docs_reference.stale()
    assert not stale, f"stale generated pages under docs/reference/ (run `make docs` and commit): {stale}"


def test_the_staleness_check_notices_a_changed_page(tmp_path, monkeypatch):
    """The checker itself: a generated page edited by hand (or left behind by a code change) is reported."""
    for name, text in docs_reference.pages().items():
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(docs_reference, "OUT", tmp_path)
    assert docs_reference.stale() == []
    (tmp_path / "settings.md").write_text((tmp_path / "settings.md").read_text() + "\nretyped by hand\n")
    (tmp_path / "cli.md").unlink()
    assert docs_reference.stale() == ["settings.md", "cli.md"]


def _chain(node: ast.AST) -> tuple[str, ...]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.insert(0, node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.insert(0, node.id)
    return tuple(parts)


def _variables_read(paths: list[Path]) -> set[str]:
    """Environment variable names the code reads: `os.environ.get("X")`, `os.environ["X"]`, `os.getenv("X")`,
    `env_int("X", ...)` with a literal name."""
    found = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and _chain(node.func) in READERS and node.args:
                arg = node.args[0]
            elif isinstance(node, ast.Subscript) and _chain(node.value) == ("os", "environ"):
                arg = node.slice
            else:
                continue
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and NAMED.match(arg.value):
                found.add(arg.value)
    return found


def test_the_settings_table_names_every_variable_the_code_reads():
    code = sorted((ROOT / "include" / "mgdata").rglob("*.py")) + sorted((ROOT / "dags").glob("*.py"))
    read = _variables_read(code)
    assert {"MGDATA_STORAGE", "MGDATA_EXTRACT_THREADS", "MGDATA_SCHEDULE"} <= read  # the scan finds them
    assert read == {v.name for v in VARIABLES}


def test_no_history_words_in_the_tree():
    """The phrase list of the docs' rule, built from parts so this file does not match itself."""
    pairs = (("this", "round"), ("previous", "round"), ("earlier", "stop"), ("this", "stop"))
    phrases = [f"{a} {b}" for a, b in pairs]
    pattern = "|".join(phrases + ["round [0-9]", "issue [0-9]+"])
    where = ["README.md", "docs", "include", "dags", "plugins", "tests", "bench"]
    out = subprocess.run(
        ["grep", "-rniIE", pattern, *where], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert out.returncode == 1, "history words found:\n" + out.stdout[:3000]


def test_the_docs_site_lists_every_page():
    """mkdocs --strict (in make test) fails on broken links; this names a page left out of the nav."""
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(nav) -> set[str]:
        out = set()
        for item in nav:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            out |= pages(value) if isinstance(value, list) else {value}
        return out

    on_disk = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert pages(config["nav"]) == on_disk
