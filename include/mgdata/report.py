"""Assemble a run: gather every selected source's outcome, merge manifests, materialise data/, write the report.

`runs/<run_id>/report.json` (its JSON Schema: `schemas/report.schema.json`) and `runs/<run_id>/report.html` for people.
A source's outcome comes from the store, not from Airflow: its summary if finalize succeeded, else the failures its
tasks recorded, else "did not finish". That is why the report covers every source whatever the others did.
"""

from __future__ import annotations

import html
import logging
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.compute as pc

from mgdata import manifest
from mgdata.run import Run, no_ingest_summary, now, put_json, read_json
from mgdata.storage import StoreError

QUARANTINE_LISTED = 500
# The JSON Schema of report.json: the contract for machines reading it (the docs' report reference is made from it;
# a test validates a real run's report against it, and no object in it admits a key the schema does not name).
REPORT_SCHEMA = Path(__file__).resolve().parent / "schemas" / "report.schema.json"


def source_outcome(run: Run, source: str) -> dict:
    summary = read_json(run.store, run.key(source, "summary.json"))
    if summary is not None:
        return summary
    errors = [read_json(run.store, o.key) for o in run.store.list(run.key(source, "errors") + "/")]
    last = max(errors, key=lambda e: e["at"]) if errors else None
    reason = (
        f"{last['task']}: {last['error']}" if last else "did not finish (no summary and no recorded error)"
    )
    return no_ingest_summary(run, source, "failed", reason)


def _lay_out_source(run: Run, name: str, table, layout: dict) -> None:
    """Place one source's usable images under the layout and sweep its prefixes; add the outcome to `layout`."""
    from mgdata.layout import add_outcome, materialize

    files: list[tuple[str, int]] = []
    if table is not None:
        usable = manifest.usable(table.select(["path", "bytes", "status"]))
        files = list(zip(usable["path"].to_pylist(), usable["bytes"].to_pylist(), strict=True))
        del usable
    add_outcome(layout, materialize(run.store, run.settings.layout_dir, files, run.source(name).layout))


def _lay_out_recipes(run: Run, sources: dict[str, dict]) -> tuple[dict, Exception | None]:
    """The tree of every recipe the run serves (`recipes`; MG-LLaVA's is the data/ tree above) at its root, laid out
    from the same store objects. A recipe whose sources did not all succeed is laid out with what there is (its
    verdict says what is missing); a failing tree is reported and fails the task, so assemble is retried."""
    from mgdata.recipes import DEFAULT_RECIPE, lay_out, load_recipes

    names = [n for n in run.settings.recipes if n != DEFAULT_RECIPE]
    if not names:
        return {}, None
    recipes = load_recipes()  # the run's selection has checked the asked recipes' sources against its catalog
    trees: dict = {}
    for name in names:
        root = run.settings.recipe_root(name)
        if root is None:
            trees[name] = {
                "root": None,
                "files": 0,
                "note": "no tree: set MGDATA_RECIPES_DIR or MGDATA_LAYOUT_DIR",
            }
            continue
        try:
            trees[name] = lay_out(run.store, recipes[name], run.catalog, root)
        except Exception as e:
            trees[name] = {"root": str(root), "files": 0, "error": f"{type(e).__name__}: {e}"}
            return trees, e
    return trees, None


def _tree_error(layout: dict | None, trees: dict, run: Run) -> tuple[str, str]:
    if layout and layout.get("error"):
        return str(run.settings.layout_dir), layout["error"]
    name, tree = next((n, t) for n, t in trees.items() if t.get("error"))
    return f"{tree['root']} (recipe {name})", tree["error"]


def assemble_run(run: Run, selected: list[str], summaries: dict[str, dict] | None = None) -> dict:
    """The run's report over the `selected` sources, and the trees. `summaries`: sources' summaries the caller
    holds (the DAG's unchanged sources hand theirs on as their plan task's XCom); the others are read from the
    store."""
    store = run.store
    summaries = summaries or {}
    sources = {name: summaries.get(name) or source_outcome(run, name) for name in selected}
    quarantine: list[dict] = []
    usable_files = 0
    layout, layout_error = None, None
    if run.settings.layout_dir:
        layout = {"root": str(run.settings.layout_dir), "files": 0}
    manifests = manifest.SourceManifests(store, run.settings.manifest_copies())
    for name, outcome in sources.items():
        if outcome["status"] != "ok":
            continue
        table = manifests.read(name)
        if table is not None:
            counts = manifest.counts(table)
            usable_files += sum(counts[status] for status in manifest.USABLE)
            bad = table.filter(pc.equal(table["status"], "invalid")).select(["path", "error", "origin"])
            quarantine += [{"source": name, **row} for row in bad.to_pylist()]
        if layout is not None and layout_error is None:
            # One source at a time: its files are the only per-file state held (the largest source, not the corpus).
            # The tree is a function of the manifests, so a retry after a kill here converges (see layout.py). A
            # failure of the tree is reported with every source's outcome, then fails the task so it is retried.
            try:
                _lay_out_source(run, name, table, layout)
            except Exception as e:
                layout_error = e
                layout["error"] = f"{type(e).__name__}: {e}"
        del table
    if layout is not None and layout_error is None:
        from mgdata.layout import materialize_annotations

        try:
            layout["annotations"] = materialize_annotations(store, run.settings.layout_dir)
        except Exception as e:
            layout_error = e
            layout["error"] = f"{type(e).__name__}: {e}"

    trees: dict = {}
    if layout_error is None:
        trees, layout_error = _lay_out_recipes(run, sources)

    failed = sorted(n for n, o in sources.items() if o["status"] == "failed")
    totals = {
        k: sum(o.get(k) or 0 for o in sources.values())
        for k in ("files_fetched", "bytes_fetched", "images_ok", "images_invalid", "images_normalized")
    }
    report = {
        "run_id": run.run_id,
        "status": "failed" if failed else "success",
        "failed_sources": failed,
        "finished": now(),
        "store": store.url,
        "catalog": run.settings.catalog,
        "force": run.force,
        "sources": sources,
        "totals": totals,
        "layout": layout,
        "recipe_trees": trees,
        "quarantine": quarantine[:QUARANTINE_LISTED],
        "quarantine_total": len(quarantine),
        "ready_to_train": {
            "checked": False,
            "ready": False,
            "note": "pending: the verify task checks the training JSONs after assemble",
            "referenced": 0,
            "present": 0,
            "missing": 0,
            "missing_by_prefix": {},
            "ids_without_boxes": 0,
        },
    }
    put_json(store, f"runs/{run.run_id}/report.json", report)
    store.put_bytes(f"runs/{run.run_id}/report.html", render_html(report).encode())
    if layout_error is not None:
        where, error = _tree_error(layout, trees, run)
        raise RuntimeError(
            f"run {run.run_id}: the tree at {where} failed: {error} (the report is written; retry assemble)"
        ) from layout_error
    return {
        "status": report["status"],
        "failed_sources": failed,
        "report": store.describe(f"runs/{run.run_id}/report.json"),
        "images": totals["images_ok"] + totals["images_normalized"],
        "layout_files": usable_files,
        "totals": totals,
        "sources": {name: {k: o.get(k) for k in ("status", *totals)} for name, o in sources.items()},
    }


def verify_run(run: Run) -> dict:
    """The ready-to-train check over the store's manifests (and the local tree), written into the run's report."""
    from mgdata.annotations import StoredKeys, check_store, store_resolver

    key = f"runs/{run.run_id}/report.json"
    report = read_json(run.store, key)
    if report is None:
        raise RuntimeError(f"run {run.run_id}: no report at {run.store.describe(key)} (did assemble run?)")
    layout_dir = run.settings.layout_dir if report.get("layout") else None
    outcomes = {
        name: {"status": o.get("status"), "error": o.get("error")} for name, o in report["sources"].items()
    }
    manifests = manifest.SourceManifests(run.store, run.settings.manifest_copies())
    resolve = store_resolver(run.store, list(run.catalog.sources), layout_dir=layout_dir, manifests=manifests)
    stored = StoredKeys(run.store)  # the JSONs of every verdict, one listing per folder
    ready = check_store(run.store, run.catalog, sources=outcomes, resolve=resolve, stored=stored)
    report["ready_to_train"] = ready
    report["recipes"] = recipe_verdicts(run, ready, outcomes, resolve.in_store, stored)
    put_json(run.store, key, report)
    run.store.put_bytes(f"runs/{run.run_id}/report.html", render_html(report).encode())
    keys = ("checked", "ready", "note", "samples", "text_only", "referenced", "present", "missing", "broken")
    keys += ("ids_without_boxes",)
    return {k: ready[k] for k in keys} | {"missing_by_prefix": ready["missing_by_prefix"]}


def recipe_verdicts(run: Run, ready: dict, outcomes: dict[str, dict], in_store, stored=None) -> dict:
    """Every shipped recipe's verdict from the same store: the default recipe's is the run's `ready_to_train`;
    the others read their JSONs where the store holds them. `served`: every source the recipe needs was in this run.
    A recipe that cannot be checked (a source the run's catalog lacks, an unreadable JSON) says why; the run goes on.
    `in_store`: image paths' status in the manifests the run's check already read (no second read per recipe)."""
    from mgdata.annotations import AnnotationError
    from mgdata.recipes import DEFAULT_RECIPE, RecipeError, check_in_store, load_recipes, recipe_sources

    try:
        recipes = load_recipes()
    except (RecipeError, OSError) as e:  # a packaging fault, not the run's: the verdict above stands
        logging.getLogger("mgdata.verify").warning("recipes not checked: %s", e)
        return {}
    verdicts = {}
    for name, recipe in recipes.items():
        served = set(recipe_sources(recipe)) <= set(outcomes)
        lacking = sorted(set(recipe.sources) - set(run.catalog.sources))
        verdict: dict = {"stages": []}
        if name == DEFAULT_RECIPE:
            verdict |= {"ready": ready["ready"], "note": "the run's ready_to_train verdict"}
        elif lacking:
            verdict |= {
                "ready": False,
                "note": f"not checked: the catalog has no source {', '.join(lacking)}",
            }
        else:
            try:
                verdict = check_in_store(
                    run.store, recipe, run.catalog, sources=outcomes, in_store=in_store, stored=stored
                )
            except (AnnotationError, StoreError) as e:
                verdict |= {"ready": False, "note": f"not checked: {e}"}
        verdicts[name] = {"title": recipe.title, "trainer": recipe.trainer, "served": served} | verdict
    return verdicts


def _mb(n: int | None) -> str:
    return f"{(n or 0) / 1e6:,.1f} MB"


def _recipes_html(recipes: dict) -> str:
    """One line per recipe: its verdict from the same store, and whether this run served all its sources."""
    if not recipes:
        return ""
    e = html.escape
    items = "".join(
        f"<li><strong>{e(r['title'])}</strong> (<code>{e(name)}</code>"
        f"{'' if r['served'] else ', not all its sources in this run'}): {e(r['note'])}"
        f"{_stages_html(r.get('stages') or [])}</li>"
        for name, r in recipes.items()
    )
    return f"<h3>Recipes</h3><ul>{items}</ul>"


def _issue(url: str) -> str:
    """`LLaVA #1618` for https://github.com/haotian-liu/LLaVA/issues/1618."""
    parts = url.rstrip("/").split("/")
    return f"{parts[-3]} #{parts[-1]}" if len(parts) >= 4 else url


def _stages_html(stages: list[dict]) -> str:
    """A recipe's stages: what each read (text-only samples counted apart) and whether it is ready (the recipe's note
    says why not)."""
    e = html.escape
    items = "".join(
        f"<li>{e(s['stage'])}: "
        + (
            f"{s['samples']:,} samples ({s['text_only']:,} text-only), {'ready' if s['ready'] else 'not ready'}"
            if s["checked"]
            else e(s["note"])
        )
        + "</li>"
        for s in stages
    )
    return f"<ul>{items}</ul>" if items else ""


def _ready_html(rt: dict) -> str:
    """The ready-to-train verdict, counts per path prefix (named with the source that provides it) and first misses."""
    e = html.escape
    verdict = "ready" if rt.get("ready") else "not ready" if rt.get("checked") else "not checked"
    rows = "".join(
        f"<tr><td>{e(prefix)}</td><td>{e(p['source'] or p.get('note') or '')}</td><td>{p['referenced']:,}</td>"
        f"<td>{p['present']:,}</td><td>{p['missing']:,}</td><td>{p['broken']:,}</td>"
        f"<td>{e(', '.join(p['first_missing']))}</td></tr>"
        for prefix, p in (rt.get("by_prefix") or {}).items()
    )
    files = "".join(
        f"<li><code>{e(f['json'])}</code>: {e(f['status'])} · "
        + (
            f"{f['samples']:,} samples ({f['text_only']:,} text-only), {f['ids_without_boxes']:,} without boxes"
            if f["status"] == "checked"
            else e(f.get("note") or "")
        )
        + "</li>"
        for f in rt.get("files") or []
    )
    table = (
        "<table><tr><th>prefix</th><th>source</th><th>referenced</th><th>present</th><th>missing</th><th>broken</th>"
        f"<th>first missing or broken</th></tr>{rows}</table>"
        if rows
        else ""
    )
    return (
        f"<p><strong>{verdict}</strong>: {e(rt.get('note') or '')}</p><ul>{files}</ul>{table}"
        f"{_pitfalls_html(rt)}{_findings_html(rt)}"
    )


def _titled_table(title: str, heads: tuple[str, ...], rows: str) -> str:
    """A section's table under its heading (nothing when it has no rows)."""
    head = "".join(f"<th>{h}</th>" for h in heads)
    return f"<h3>{title}</h3><table><tr>{head}</tr>{rows}</table>" if rows else ""


def _pitfalls_html(rt: dict) -> str:
    """The named checks of the known pitfalls that fired: per folder, the sentence (source, file, examples, fix)."""
    e = html.escape
    rows = "".join(
        f"<tr class='{e(p['effect'])}'><td><code>{e(name)}</code></td><td>{e(p['effect'])}</td>"
        f"<td>{e(folder)}</td><td>{f['count']:,}</td><td>{e(f['message'])}</td>"
        f"<td><a href='{e(p['upstream'])}'>{e(_issue(p['upstream']))}</a></td></tr>"
        for name, p in (rt.get("pitfalls") or {}).items()
        for folder, f in p["by"].items()
    )
    heads = ("check", "effect", "prefix or JSON", "count", "what and the fix", "reported upstream")
    return _titled_table("Known pitfalls", heads, rows)


def _findings_html(rt: dict) -> str:
    """The trainer's contract, rule by rule: what fired, how often, its first ids or paths; and members skipped."""
    e = html.escape
    rows = "".join(
        f"<tr><td><code>{e(rule)}</code></td><td>{e(f['effect'])}</td><td>{f['count']:,}</td><td>{e(f['what'])}</td>"
        f"<td>{e(', '.join(map(str, f['first'][:5])))}</td><td>{e(f['trainer'])}</td></tr>"
        for rule, f in (rt.get("findings") or {}).items()
        if f["count"]
    )
    skipped = "".join(
        f"<tr><td>{e(source)}</td><td>{e(reason)}</td><td>{r['count']:,}</td><td>{e(', '.join(r['first']))}</td></tr>"
        for source, reasons in (rt.get("skipped_members") or {}).items()
        for reason, r in reasons.items()
    )
    heads = ("rule", "effect", "count", "what", "first", "where the trainer does it")
    out = _titled_table("Contract findings", heads, rows) or (
        "<p>Contract findings: none.</p>" if rt.get("findings") else ""
    )
    return out + _titled_table(
        "Archive members not extracted", ("source", "reason", "count", "examples"), skipped
    )


def _paths_html(sources: dict) -> str:
    """Sources with two paths to the same images (OCR-VQA: its URL list or a mirror's zip): what each produced."""
    e = html.escape
    rows = [
        f"<tr><td>{e(name)}</td><td>{e(file)}</td><td>{'this run' if f['used'] else 'not used'}</td>"
        f"<td>{(f.get('ok') or 0) + (f.get('normalized') or 0):,}</td><td>{f.get('invalid') or 0:,}</td>"
        f"<td>{f.get('missing') or 0:,}</td><td>{e(f.get('run_id') or 'never')}</td></tr>"
        for name, s in sources.items()
        if any(f.get("used") is False for f in (s.get("by_file") or {}).values())
        for file, f in s["by_file"].items()
    ]
    if not rows:
        return ""
    return (
        "<h2>Images per path</h2><table><tr><th>source</th><th>path (file)</th><th>used</th><th>usable images</th>"
        f"<th>invalid</th><th>missing</th><th>last extracted by run</th></tr>{''.join(rows)}</table>"
    )


LAYOUT_COLUMNS = ("files", "linked", "copied", "downloaded", "unchanged", "removed")


def _layout_html(layout: dict | None) -> str:
    """The materialised trees (`data/`, and `annotations/` beside it): where, and how each file got there."""
    if not layout:
        return "<p>not materialised (set MGDATA_LAYOUT_DIR)</p>"
    e = html.escape
    trees = [("data/", layout)]
    if layout.get("annotations"):
        trees.append(("annotations/", layout["annotations"]))
    head = "".join(f"<th>{c}</th>" for c in LAYOUT_COLUMNS)
    rows = "".join(
        f"<tr><td>{name}</td><td><code>{e(str(tree.get('root') or ''))}</code></td>"
        + "".join(f"<td class='num'>{tree.get(c) or 0:,}</td>" for c in LAYOUT_COLUMNS)
        + "</tr>"
        for name, tree in trees
    )
    return f"<table id='layout'><tr><th>tree</th><th>root</th>{head}</tr>{rows}</table>"


def render_html(report: dict) -> str:
    e = html.escape
    rows = []
    for name, s in report["sources"].items():
        d = s.get("diff") or {}
        rows.append(
            f"<tr class='{e(s['status'])}'><td>{e(name)}</td><td>{e(s['status'])}</td><td>{s.get('files_fetched', 0)}</td>"
            f"<td>{_mb(s.get('bytes_fetched'))}</td><td>{s.get('images_ok', 0):,}</td><td>{s.get('images_normalized', 0):,}</td>"
            f"<td>{s.get('images_invalid', 0):,}</td><td>{s.get('expected_images') or '—'}</td>"
            f"<td>+{d.get('added', 0)} / −{d.get('removed', 0)} / ~{d.get('changed', 0)}</td><td>{e(s.get('error') or '')}</td></tr>"
        )
    quarantine = "".join(
        f"<tr><td>{e(q['source'])}</td><td>{e(q['path'])}</td><td>{e(q['error'] or '')}</td></tr>"
        for q in report["quarantine"]
    )
    layout = report.get("layout")
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mgllava_data run {e(report["run_id"])}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; }}
th {{ background: #f3f3f3; }} td.num {{ text-align: right; }} tr.failed td {{ background: #fde8e8; }} tr.skipped td {{ color: #888; }}
.status-success {{ color: #17803d; }} .status-failed {{ color: #b91c1c; }}
</style></head><body>
<h1>mgllava_data run <code>{e(report["run_id"])}</code></h1>
<p>Status: <strong class="status-{e(report["status"])}">{e(report["status"])}</strong> · store <code>{e(report["store"])}</code>
 · {report["totals"]["images_ok"] + report["totals"]["images_normalized"]:,} usable images
 · {_mb(report["totals"]["bytes_fetched"])} fetched · generated {generated}</p>
<h2>Sources</h2>
<table><tr><th>source</th><th>status</th><th>files fetched</th><th>bytes fetched</th><th>ok</th><th>normalized</th>
<th>invalid</th><th>expected</th><th>diff (added/removed/changed)</th><th>error or reason</th></tr>
{"".join(rows)}</table>
{_paths_html(report["sources"])}
<h2>Ready to train</h2>
{_ready_html(report.get("ready_to_train") or {})}
{_recipes_html(report.get("recipes") or {})}
<h2>data/ layout</h2>
{_layout_html(layout)}
<h2>Quarantine ({report["quarantine_total"]:,})</h2>
<table><tr><th>source</th><th>path</th><th>reason</th></tr>{quarantine}</table>
</body></html>
"""
