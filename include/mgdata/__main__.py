"""`python -m mgdata verify`: the ready-to-train check against any local data/ folder and training JSON.
`python -m mgdata check`: the store's invariant (manifests, objects, reports, layout agree; nothing half-done).

    python -m mgdata verify --data data/ --json pretrain.json --boxes pretrain_only_box.json [--decode] [--report out.json]
    python -m mgdata check [--source S ...] [--layout DIR] [--sizes-only]

verify's exit status: 0 ready to train, 1 not ready (missing or broken images, samples without boxes), 2 the input
could not be read. Prefixes are named with the catalog source that provides them (`MGDATA_CATALOG`, else the shipped
catalog). check reads the store of `MGDATA_STORAGE` (and `MGDATA_S3_CONN_ID`), the layout of `MGDATA_LAYOUT_DIR`
unless `--layout` says otherwise; exit status 0 when the invariant holds, 1 listing what is wrong, 2 unreadable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mgdata.annotations import AnnotationError, Check, folder_resolver
from mgdata.catalog import CatalogError, load_catalog
from mgdata.settings import Settings
from mgdata.storage import StoreError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mgdata", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="check that a training JSON's images and boxes are all there")
    verify.add_argument("--data", required=True, type=Path, help="the data/ folder the trainer reads")
    verify.add_argument("--json", required=True, type=Path, help="a LLaVA-style training JSON")
    verify.add_argument("--boxes", type=Path, help="the bbox JSON every image sample needs an entry in")
    verify.add_argument(
        "--decode", action="store_true", help="fully decode every image (slow; finds broken files)"
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
    return parser


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


def verify(args: argparse.Namespace) -> int:
    if not args.data.is_dir():
        print(f"verify: --data {args.data} is not a directory", file=sys.stderr)
        return 2
    catalog = load_catalog(Settings.from_env().catalog)
    check = Check()
    resolve = folder_resolver(args.data, decode=args.decode)
    with open(args.json, "rb") as samples:
        if args.boxes is None:
            check.check_file(str(args.json), samples, resolve)
        else:
            with open(args.boxes, "rb") as boxes:
                check.check_file(str(args.json), samples, resolve, boxes_name=str(args.boxes), boxes=boxes)
    result = check.as_report(catalog)
    if args.report:
        args.report.write_text(json.dumps(result, indent=1))
    print(summary(result))
    return 0 if result["ready"] else 1


def summary(result: dict) -> str:
    lines = [result["note"], ""]
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
    for title, key in (
        ("first missing", "first_missing"),
        ("first broken", "first_broken"),
        ("first ids without boxes", "first_ids_without_boxes"),
    ):
        if result[key]:
            lines.append(f"\n{title}:\n  " + "\n  ".join(result[key]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return check(args) if args.command == "check" else verify(args)
    except (OSError, AnnotationError, CatalogError, StoreError) as e:
        print(f"{args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
