"""`python -m mgdata verify`: a trainer's reading contract checked against any local data/ folder and training JSON,
or a whole recipe's tree. `python -m mgdata check`: the store's invariant (manifests, objects, reports, layout agree;
nothing half-done).

    python -m mgdata verify --data data/ --json pretrain.json --boxes pretrain_only_box.json
        [--json instruct.json --boxes instruct_only_box.json ...] [--contract C] [--fast] [--report out.json]
    python -m mgdata verify --recipe llava-v1.5 --root playground/data [--fast] [--report out.json]
    python -m mgdata check [--source S ...] [--layout DIR] [--sizes-only]
    python -m mgdata layout --recipe sharegpt4v --root ShareGPT4V/

verify opens every referenced image and converts it as the trainer does (Pillow defaults, a thread pool, progress on a
terminal); `--fast` only checks that each file exists, and its verdict says so. Several JSONs (each `--json` with the
`--boxes` given with it, in order) are checked at once, one process per JSON up to the cores, into one report, read
through MG-LLaVA's contract unless `--contract` names another. `--recipe` reads each of the recipe's JSONs where its
launch scripts put them under `--root`, through the contract the recipe names, and the recipe is ready when every
stage is. Exit status: 0 ready to train, 1 not
ready (a contract finding: missing or unreadable images, bad samples, missing or malformed boxes), 2 the input could
not be read. Prefixes are named with the catalog source that provides them (`MGDATA_CATALOG`, else the shipped
catalog).

check reads the store of `MGDATA_STORAGE` (and `MGDATA_S3_CONN_ID`), the layout of `MGDATA_LAYOUT_DIR` unless
`--layout` says otherwise; exit status 0 when the invariant holds, 1 listing what is wrong, 2 unreadable.

layout places a recipe's tree under `--root` from the same store: every usable image of its sources at the path its
trainer reads, in its folder names (hardlinks from a local store: the bytes are held once whatever the number of
trees), and names each training JSON that is not yet where `verify --recipe` looks for it in the tree.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from mgdata.annotations import AnnotationError
from mgdata.catalog import CatalogError, load_catalog
from mgdata.contracts import CONTRACTS
from mgdata.local_check import Options, Pair, check_pair, check_pairs, ignore_bomb_warnings, new_check
from mgdata.recipes import RecipeCatalog, RecipeError, load_recipes, needed_stages
from mgdata.settings import Settings, usable_cores
from mgdata.storage import StoreError

FAST_NOTE = "existence only (--fast): images were not opened; run without --fast for the trainer's verdict"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mgdata",
        description="Check a data/ folder against the trainer's reading contract (verify), or a store's invariant (check).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser(
        "verify", help="check training JSONs against their trainer's reading contract"
    )
    verify.add_argument("--data", type=Path, help="the data/ folder the trainer reads (image_folder)")
    verify.add_argument(
        "--json",
        action="append",
        type=Path,
        help="a LLaVA-style training JSON (repeatable: checked at once, one process per JSON up to the cores)",
    )
    verify.add_argument(
        "--boxes",
        action="append",
        type=Path,
        help="the bbox JSON every image sample needs an entry in (one per --json, in the same order, or none)",
    )
    verify.add_argument(
        "--contract", choices=sorted(CONTRACTS), default="mgllava", help="the trainer --json is read by"
    )
    verify.add_argument(
        "--recipe", help="check every training JSON of this recipe (instead of --data/--json)"
    )
    verify.add_argument("--root", type=Path, help="with --recipe: the trainer's tree (e.g. playground/data)")
    verify.add_argument(
        "--fast", action="store_true", help="existence only: do not open the images (not the verdict)"
    )
    verify.add_argument(
        "--threads",
        type=int,
        default=max(2, 2 * usable_cores()),
        help="images opened at once (default 2x cores)",
    )
    verify.add_argument("--report", type=Path, help="also write the result as JSON to this file")
    check = commands.add_parser(
        "check", help="check that the store's manifests, objects, reports and layout agree"
    )
    check.add_argument("--source", action="append", help="check only this source (repeatable); default: all")
    check.add_argument(
        "--layout", type=Path, help="the data/ tree to compare (default: MGDATA_LAYOUT_DIR, if set)"
    )
    check.add_argument(
        "--sizes-only", action="store_true", help="compare object sizes, not sha256 (no object is read)"
    )
    layout = commands.add_parser(
        "layout", help="lay out a recipe's tree from the store (its images, as it reads them)"
    )
    layout.add_argument("--recipe", required=True, help="the recipe (include/recipes/<name>.yaml)")
    layout.add_argument(
        "--root", required=True, type=Path, help="the trainer's tree to lay out (made if missing)"
    )
    return parser


def lay_out_recipe(args: argparse.Namespace) -> int:
    from mgdata.recipes import lay_out

    settings = Settings.from_env()
    catalog = settings.load_catalog()
    recipes = load_recipes(catalog=catalog)
    if args.recipe not in recipes:
        print(f"layout: no recipe {args.recipe!r}; the recipes are {sorted(recipes)}", file=sys.stderr)
        return 2
    recipe = recipes[args.recipe]
    outcome = lay_out(settings.open_store(), recipe, catalog, args.root)
    placed = ", ".join(
        f"{outcome[k]:,} {k}"
        for k in ("linked", "copied", "downloaded", "unchanged", "removed")
        if outcome.get(k)
    )
    print(f"{recipe.name}: {outcome['files']:,} images under {args.root} ({placed or 'nothing to place'})")
    for t in recipe.training:
        where = args.root / t.json_path
        if not where.is_file():
            print(
                f"  {t.stage}: put {t.json_path} there"
                + (f" (from {t.url})" if t.url else f" (source {t.source})")
            )
    return 0


def check(args: argparse.Namespace) -> int:
    from mgdata.check import check_store

    settings = Settings.from_env()
    store = settings.open_store()
    layout = args.layout or settings.layout_dir
    findings = check_store(
        store, settings.load_catalog(), sources=args.source, layout_dir=layout, hashes=not args.sizes_only
    )
    for name, c in findings.sources.items():
        print(
            f"{name:22} {c['rows']:>9,} rows {c['usable']:>9,} usable {c['objects']:>9,} objects "
            f"{c['quarantined']:>7,} quarantined"
        )
    if findings.ok:
        print(f"{store.url}: the invariant holds")
        return 0
    print(f"{store.url}: {len(findings.problems)} problem(s)", file=sys.stderr)
    for problem in findings.problems:
        print(f"  {problem}", file=sys.stderr)
    return 1


def _progress(stream=sys.stderr):
    """A one-line progress display on a terminal; nothing when stderr is a file or a pipe."""
    if not stream.isatty():
        return None
    started = time.monotonic()

    def show(samples: int, images: int) -> None:
        rate = images / max(time.monotonic() - started, 1e-6)
        stream.write(f"\r{samples:,} samples, {images:,} images checked ({rate:,.0f}/s)   ")
        stream.flush()

    return show


def verify(args: argparse.Namespace) -> int:
    if args.recipe:
        return verify_recipe(args)
    if args.data is None or not args.json:
        print("verify: give --data and --json, or --recipe and --root", file=sys.stderr)
        return 2
    if not args.data.is_dir():
        print(f"verify: --data {args.data} is not a directory", file=sys.stderr)
        return 2
    if args.boxes and len(args.boxes) != len(args.json):
        print(
            f"verify: {len(args.boxes)} --boxes for {len(args.json)} --json: give one per JSON",
            file=sys.stderr,
        )
        return 2
    catalog = load_catalog(Settings.from_env().catalog)
    ignore_bomb_warnings()
    progress = _progress()
    boxes = args.boxes or [None] * len(args.json)
    pairs = [Pair(str(j), str(b) if b else None) for j, b in zip(args.json, boxes, strict=True)]
    options = Options(str(args.data), decode=not args.fast, threads=args.threads, contract=args.contract)
    check = check_pairs(pairs, options, progress=progress)
    if progress:
        sys.stderr.write("\n")
    return _conclude(args, _result(args, check.as_report(catalog)), summary)


def verify_recipe(args: argparse.Namespace) -> int:
    catalog = load_catalog(Settings.from_env().catalog)
    recipes = load_recipes(catalog=catalog)
    if args.recipe not in recipes:
        print(f"verify: no recipe {args.recipe!r}; the recipes are {sorted(recipes)}", file=sys.stderr)
        return 2
    if args.root is None or not args.root.is_dir():
        print(f"verify: --root {args.root} is not a directory (the trainer's tree)", file=sys.stderr)
        return 2
    ignore_bomb_warnings()
    recipe = recipes[args.recipe]
    stages = []
    for t in recipe.training:
        view = RecipeCatalog(recipe, catalog, t.image_folder)
        options = Options(str(args.root / t.image_folder), not args.fast, args.threads, t.contract)
        check = new_check(options, _progress(), image_prefix=view.prefix)
        samples, boxes = args.root / t.json_path, args.root / t.boxes if t.boxes else None
        if not samples.is_file():
            check.absent(str(samples), t.boxes, optional=t.optional, why="not in the tree")
        elif boxes is not None and not boxes.is_file():
            check.absent(
                str(samples), str(boxes), optional=t.optional, why=f"its bbox JSON {boxes} is not there"
            )
        else:
            check_pair(check, Pair(str(samples), str(boxes) if boxes else None), options)
            if check.progress:
                sys.stderr.write("\n")
        stages.append({"stage": t.stage, "optional": t.optional, **_result(args, check.as_report(view))})
    ready = all(s["ready"] for s in needed_stages(stages))
    result = {"recipe": recipe.name, "trainer": recipe.trainer, "ready": ready, "stages": stages}
    return _conclude(args, result, recipe_summary)


def _result(args: argparse.Namespace, result: dict) -> dict:
    result["mode"] = "fast" if args.fast else "decode"
    if args.fast:
        result["note"] += f" [{FAST_NOTE}]"
    return result


def _conclude(args: argparse.Namespace, result: dict, show) -> int:
    if args.report:
        args.report.write_text(json.dumps(result, indent=1))
    print(show(result))
    return 0 if result["ready"] else 1


def recipe_summary(result: dict) -> str:
    lines = []
    for stage in result["stages"]:
        optional = " (optional)" if stage["optional"] else ""
        lines += [f"== {stage['stage']}{optional}, read as {stage['contract']}", summary(stage), ""]
    verdict = "ready to train" if result["ready"] else "not ready"
    lines.append(f"recipe {result['recipe']}: {verdict} ({result['trainer']})")
    return "\n".join(lines)


def summary(result: dict) -> str:
    lines = [
        result["note"],
        "",
        f"{result['samples']:,} samples, {result['text_only']:,} of them text-only",
        "",
    ]
    lines.append(
        f"{'prefix':34} {'source':16} {'referenced':>10} {'present':>10} {'missing':>9} {'broken':>7}"
    )
    for prefix, p in result["by_prefix"].items():
        source = p["source"] or "(none)"
        lines.append(
            f"{prefix:34} {source:16} {p['referenced']:>10,} {p['present']:>10,} {p['missing']:>9,} {p['broken']:>7,}"
        )
    if result["unprovided_prefixes"]:
        lines.append(f"\nno catalog source provides: {', '.join(result['unprovided_prefixes'])}")
    lines.append("\ncontract findings (rule, effect, count, first):")
    for rule, f in result["findings"].items():
        if f["count"]:
            lines.append(
                f"  {rule:24} {f['effect']:8} {f['count']:>9,}  {', '.join(map(str, f['first'][:5]))}"
            )
    if not any(f["count"] for f in result["findings"].values()):
        lines.append("  none")
    fired = [(name, p) for name, p in result["pitfalls"].items() if p["count"] and name != "text_only"]
    if fired:
        lines.append("\nknown pitfalls (named check, effect: what, fix):")
        lines += [f"  {name} {p['effect']}: {f['message']}" for name, p in fired for f in p["by"].values()]
    for title, key in (("first missing", "first_missing"), ("first broken", "first_broken")):
        if result[key]:
            lines.append(f"\n{title}:\n  " + "\n  ".join(result[key]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        commands = {"check": check, "verify": verify, "layout": lay_out_recipe}
        return commands[args.command](args)
    except (OSError, AnnotationError, CatalogError, RecipeError, StoreError) as e:
        print(f"{args.command}: {e}", file=sys.stderr)
        return 2
    except BrokenProcessPool as e:
        print(f"{args.command}: a worker process died ({e})", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
