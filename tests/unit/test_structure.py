"""The library's dependency order: no import cycle inside `include/`, no private name crossing modules, and no
pipeline module depending on the offline mirror.

`include/` holds two packages: `mgdata`, the pipeline every task runs, and `offline_mirror`, the demo's and the
tests' stand-in for the upstream servers (it imports `mgdata` to read the catalog; the reverse is forbidden, so no
stage can come to rely on the stand-in). Every module of both packages is parsed with `ast` (nothing is imported). An edge `a -> b` is any import of mgdata
module `b` written in `a`, at module level or inside a function: an import deferred into a function still makes `a`
depend on `b`, so a cycle through a lazy import is a cycle in the design. A package's `__init__` is the module
`mgdata.pkg`; importing `mgdata.pkg.mod` is an edge to `mgdata.pkg.mod` only (Python runs the parent first, which is
not a dependency the code chose).

A name starting with one underscore is private to its module. Importing one from another mgdata module
(`from mgdata.x import _name`) or reaching it through an imported module (`x._name`) fails: a shared name belongs to
the owner's interface under a public name.
"""

from __future__ import annotations

import ast
from pathlib import Path

INCLUDE = Path(__file__).resolve().parents[2] / "include"
PACKAGES = ("mgdata", "offline_mirror")


def _module_name(path: Path) -> str:
    parts = path.relative_to(INCLUDE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for package in PACKAGES for p in sorted((INCLUDE / package).rglob("*.py"))}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module name an ImportFrom refers to (relative imports resolved against `module`)."""
    if not node.level:
        return node.module or ""
    is_package = MODULES[module].name == "__init__.py"
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str):
    """(imported module, names taken from it, {local alias: module}) for every import statement in `module`."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"), str(MODULES[module]))
    edges: set[str] = set()
    private: list[str] = []
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in MODULES:
                    edges.add(a.name)
                    if a.asname:
                        aliases[a.asname] = a.name
                    else:
                        top = a.name.split(".")[0]
                        aliases.setdefault(top, top)
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, node)
            if source not in MODULES:
                continue
            for a in node.names:
                submodule = f"{source}.{a.name}"
                if submodule in MODULES:  # from offline_mirror import hub
                    edges.add(submodule)
                    aliases[a.asname or a.name] = submodule
                    continue
                edges.add(source)
                if _is_private(a.name) and source != module:
                    private.append(f"{module} imports {a.name} from {source} (line {node.lineno})")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            chain, value = [], node.value
            while isinstance(value, ast.Attribute):
                chain.insert(0, value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in aliases:
                target = ".".join([aliases[value.id], *chain])
                if target in MODULES and target != module:
                    private.append(f"{module} uses {target}.{node.attr} (line {node.lineno})")
    edges.discard(module)
    return edges, private


GRAPH: dict[str, set[str]] = {}
PRIVATE: list[str] = []
for _name in MODULES:
    GRAPH[_name], _found = _imports(_name)
    PRIVATE += _found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan), as a path a -> ... -> a."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)

    cycles = []
    for component in components:
        members, start = set(component), component[0]
        # shortest way back to `start` inside the component (breadth-first)
        paths, seen = [[start]], {start}
        while paths:
            path = paths.pop(0)
            successors = sorted(graph[path[-1]] & members)
            if start in successors:
                cycles.append(path + [start])
                break
            for w in successors:
                if w not in seen:
                    seen.add(w)
                    paths.append(path + [w])
    return cycles


def test_every_module_is_parsed():
    assert {"mgdata.ingest", "mgdata.run", "mgdata.fetch.transfer", "offline_mirror.media"} <= set(MODULES)


def test_no_pipeline_module_imports_the_offline_mirror():
    """The stand-in for the upstream world is imported by tests, the demo and benchmarks, never by a stage."""
    found = sorted(
        f"{m} -> {d}"
        for m, deps in GRAPH.items()
        if m.startswith("mgdata")
        for d in deps
        if d.startswith("offline_mirror")
    )
    assert not found, "pipeline modules importing the offline mirror: " + "; ".join(found)
    assert any(
        d.startswith("mgdata") for m, deps in GRAPH.items() if m.startswith("offline_mirror") for d in deps
    )


def test_no_import_cycle_inside_include():
    cycles = [" -> ".join(c) for c in _cycles(GRAPH)]
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_no_private_name_crosses_modules():
    assert not PRIVATE, "private names imported from another module:\n" + "\n".join(PRIVATE)


def test_the_cycle_finder_names_the_path():
    """The checker itself: a made-up graph with a cycle is reported with its path, an acyclic one not at all."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_catalog_and_settings_are_at_the_bottom():
    """catalog imports no mgdata module but the bottom ones (redact; contracts, whose names a catalog's training
    files are checked against); settings only catalog (and the store it opens)."""
    assert GRAPH["mgdata.catalog"] <= {"mgdata.redact", "mgdata.contracts"}
    assert GRAPH["mgdata.redact"] == set()
    contracts = {m for m in GRAPH if m.startswith("mgdata.contracts")}
    assert all(GRAPH[m] <= contracts for m in contracts)  # the trainers' contracts stand on nothing else
    assert GRAPH["mgdata.settings"] <= {"mgdata.catalog", "mgdata.storage"}


def test_no_stage_imports_ingest():
    """ingest orchestrates the stages; the stages share the run context through mgdata.run, never through ingest."""
    assert sorted(m for m, deps in GRAPH.items() if "mgdata.ingest" in deps) == []
