"""Run audit for `mgllava_data`: the FastAPI app behind the UI plugin `plugins/mgdata_audit.py` (Browse → MG-LLaVA data).

It lists the runs from `runs/*/report.json` in the object store (`MGDATA_STORAGE`, local or S3, as the DAG writes
them): status, per-source counts, bytes, durations, the ready-to-train verdict, what changed since the previous
successful ingest, and the quarantined files with their reasons; charts show images and bytes per source per run, as
inline SVG (the UI may run without internet). A run's page links to the Airflow run.

Airflow does not put plugin apps behind its authentication, so every request here is checked the way Airflow's own
API checks it: the JWT from `Authorization: Bearer` or the UI's `_token` cookie, validated by the configured auth
manager, and the user must be allowed to read the DAG's runs. Browsers without a session go to the login page;
other clients get 401 (403 when the token is invalid or the user lacks access).
"""

from __future__ import annotations

import html
import json
import re
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from mgdata_audit_web import URL_PREFIX

DAG_ID = "mgllava_data"
RUNS_LISTED = 50
CHART_RUNS = 12
TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=select_autoescape(["html"]),
)
_RUN_ID = re.compile(r"^[A-Za-z0-9_.:+\-]+$")
# Tableau-10: distinguishable, and readable on white.
PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f"]
PALETTE += ["#bab0ac", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#17becf", "#bcbd22", "#e377c2"]
# What the ready-to-train verdict of a run covers: `verify` checks the training JSONs against the whole store.
VERDICT_SCOPE = (
    "The verdict covers the whole store as of the end of this run: every training JSON against every source's latest "
    "successful ingest, not only the sources of this run."
)


# ------------------------------------------------------------------------------------------------ authentication


async def airflow_user(request: Request):
    """The Airflow user behind the request (the UI's JWT), allowed to read `mgllava_data`'s runs."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user

    user = await get_user(request, None, await bearer_scheme(request))
    allowed = get_auth_manager().is_authorized_dag(
        method="GET", access_entity=DagAccessEntity.RUN, details=DagDetails(id=DAG_ID), user=user
    )
    if not allowed:
        raise HTTPException(status_code=403, detail=f"not allowed to read {DAG_ID} runs")
    return user


app = FastAPI(title="MG-LLaVA data audit", dependencies=[Depends(airflow_user)])


@app.exception_handler(HTTPException)
async def _login_or_error(request: Request, exc: HTTPException) -> Response:
    """A person opening the page without a session is sent to Airflow's login, then back here."""
    if exc.status_code == 401 and "text/html" in request.headers.get("accept", ""):
        from airflow.api_fastapi.app import get_auth_manager

        return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=302)
    return Response(
        json.dumps({"detail": exc.detail}), status_code=exc.status_code, media_type="application/json"
    )


# ------------------------------------------------------------------------------------------------ reading runs


def _store():
    from mgdata.settings import Settings

    return Settings.from_env().open_store()


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes, s = divmod(int(round(seconds)), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h {m:02d}m" if hours else f"{m}m {s:02d}s" if m else f"{s}s"


def _mb(n: int | None) -> str:
    return f"{(n or 0) / 1e6:,.1f} MB"


def run_summary(report: dict) -> dict:
    """What the run list shows of one report: verdict, totals, durations, diff totals."""
    sources = report.get("sources") or {}
    starts = [s.get("started") for s in sources.values() if s.get("started")]
    diff = {
        k: sum((s.get("diff") or {}).get(k, 0) for s in sources.values())
        for k in ("added", "removed", "changed")
    }
    totals = report.get("totals") or {}
    rt = report.get("ready_to_train") or {}
    verdict = "ready" if rt.get("ready") else "not ready" if rt.get("checked") else "not checked"
    failed = report.get("failed_sources") or []
    scope = VERDICT_SCOPE
    if failed:
        scope += f" This run failed ({', '.join(failed)}): for those, the store holds their last successful ingest."
    # A ready store after a failed run is not "this run is fine": never the plain green badge.
    caveat = verdict == "ready" and report.get("status") == "failed"
    return {
        "run_id": report["run_id"],
        "status": report.get("status"),
        "finished": report.get("finished"),
        "duration": _duration(_seconds(min(starts), report.get("finished")) if starts else None),
        "sources_ok": sum(1 for s in sources.values() if s.get("status") == "ok"),
        "sources_failed": len(report.get("failed_sources") or []),
        "sources_skipped": sum(1 for s in sources.values() if s.get("status") == "skipped"),
        "images": (totals.get("images_ok") or 0) + (totals.get("images_normalized") or 0),
        "invalid": totals.get("images_invalid") or 0,
        "missing": sum(s.get("images_missing") or 0 for s in sources.values()),
        "bytes": _mb(totals.get("bytes_fetched")),
        "files_fetched": totals.get("files_fetched") or 0,
        "quarantined": report.get("quarantine_total") or 0,
        "diff": diff,
        "ready": verdict,
        "ready_label": "store ready, run failed" if caveat else verdict,
        "ready_badge": "caveat" if caveat else verdict.replace(" ", "-"),
        "ready_note": rt.get("note") or "",
        "ready_scope": scope,
        "recipes": served_recipes(report),
    }


def served_recipes(report: dict) -> list[dict]:
    """The recipes whose every source was in the run (`recipes` of the report), each with its own verdict."""
    out = []
    failed = report.get("status") == "failed"
    for name, r in (report.get("recipes") or {}).items():
        if r.get("served"):
            verdict = "ready" if r.get("ready") else "not ready"
            # as for the run's verdict: a ready store after a failed run never wears the plain green badge
            badge = "caveat" if failed and r.get("ready") else verdict.replace(" ", "-")
            note = r.get("note") or ""
            out.append(
                {
                    "name": name,
                    "title": r.get("title") or name,
                    "ready": verdict,
                    "badge": badge,
                    "note": note,
                }
            )
    return out


def load_reports(store, limit: int = RUNS_LISTED) -> list[dict]:
    """The latest run reports, newest first."""
    keys = [o.key for o in store.list("runs/") if o.key.count("/") == 2 and o.key.endswith("/report.json")]
    reports = [json.loads(store.read_bytes(k)) for k in keys]
    reports.sort(key=lambda r: r.get("finished") or "", reverse=True)
    return reports[:limit]


# ------------------------------------------------------------------------------------------------ charts


def stacked_columns(
    title: str,
    columns: list[str],
    series: dict[str, list[float]],
    unit: str,
    *,
    tips: list[str] | None = None,
) -> str:
    """An inline SVG of stacked columns: one column per run (in the order given, oldest left) labelled `columns`,
    one colour per source, with a legend as tall as it needs; `tips` name each column in its tooltips."""
    tips = tips or columns
    width, left, bottom, top, legend_row = 720, 64, 74, 28, 15
    plot_w, plot_h = width - left - 170, 176
    height = max(top + plot_h + bottom, top + len(series) * legend_row + 8)
    peak = max([sum(v[i] for v in series.values()) for i in range(len(columns))] + [0]) or 1
    step = plot_w / max(len(columns), 1)
    e = html.escape
    parts = [
        f'<svg class="chart" role="img" aria-label="{e(title)}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
        f'<title>{e(title)}</title><text x="{left}" y="16" class="chart-title">{e(title)}</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#999"/>',
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end" class="tick">{_human(peak)}{unit}</text>',
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end" class="tick">0</text>',
        f'<text x="{left + plot_w}" y="{top + plot_h + bottom - 4}" text-anchor="end" class="axis">'
        "runs by finish time (UTC), oldest left</text>",
    ]
    for i, label in enumerate(columns):
        y = top + plot_h
        for j, (name, values) in enumerate(series.items()):
            h = values[i] / peak * plot_h
            if h <= 0:
                continue
            y -= h
            parts.append(
                f'<rect x="{left + i * step + step * 0.15:.1f}" y="{y:.1f}" width="{step * 0.7:.1f}" '
                f'height="{h:.1f}" fill="{PALETTE[j % len(PALETTE)]}"><title>{e(tips[i])} · {e(name)}: '
                f"{_human(values[i])}{unit}</title></rect>"
            )
        x, y = left + (i + 0.5) * step, top + plot_h + 12
        parts.append(
            f'<text x="{x:.1f}" y="{y}" text-anchor="end" transform="rotate(-30 {x:.1f} {y})" '
            f'class="tick run-label"><title>{e(tips[i])}</title>{e(label)}</text>'
        )
    for j, name in enumerate(series):
        y = top + j * legend_row
        parts.append(
            f'<rect x="{width - 160}" y="{y}" width="10" height="10" fill="{PALETTE[j % len(PALETTE)]}"/>'
            f'<text x="{width - 146}" y="{y + 9}" class="legend">{e(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def horizontal_bars(title: str, rows: dict[str, list[float]], stack: list[str], unit: str) -> str:
    """An inline SVG of horizontal stacked bars: one bar per source, one colour per part of the stack."""
    row_h, left, top, width = 18, 130, 44, 720
    height = top + row_h * max(len(rows), 1) + 10
    plot_w = width - left - 90
    peak = max([sum(v) for v in rows.values()] + [0]) or 1
    colours = ["#59a14f", "#edc948", "#e15759", "#94a3b8"]
    e = html.escape
    parts = [
        f'<svg class="chart" role="img" aria-label="{e(title)}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
        f'<title>{e(title)}</title><text x="0" y="16" class="chart-title">{e(title)}</text>',
    ]
    for k, name in enumerate(stack if len(stack) > 1 else []):
        parts.append(
            f'<rect x="{left + k * 110}" y="24" width="10" height="10" fill="{colours[k]}"/>'
            f'<text x="{left + k * 110 + 14}" y="33" class="legend">{e(name)}</text>'
        )
    for i, (source, values) in enumerate(rows.items()):
        y = top + i * row_h
        x = float(left)
        parts.append(f'<text x="{left - 6}" y="{y + 12}" text-anchor="end" class="tick">{e(source)}</text>')
        for k, v in enumerate(values):
            w = v / peak * plot_w
            if w > 0:
                parts.append(
                    f'<rect x="{x:.1f}" y="{y + 2}" width="{w:.1f}" height="{row_h - 5}" fill="{colours[k]}">'
                    f"<title>{e(source)} · {e(stack[k])}: {_human(v)}{unit}</title></rect>"
                )
                x += w
        parts.append(f'<text x="{x + 4:.1f}" y="{y + 12}" class="tick">{_human(sum(values))}{unit}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _human(n: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.1f}{suffix}"
    return f"{n:.0f}"


def _finish_labels(runs: list[dict]) -> list[str]:
    """`2026-12-01T15:11:17+00:00` → `12-01 15:11`: when each run finished, short enough to sit under a column (with
    the seconds when two runs finished in the same minute)."""
    labels = [(r.get("finished") or "")[5:16].replace("T", " ") or "unfinished" for r in runs]
    if len(set(labels)) < len(labels):
        labels = [(r.get("finished") or "")[5:19].replace("T", " ") or "unfinished" for r in runs]
    return labels


def run_charts(reports: list[dict]) -> list[str]:
    """Images (usable) and bytes fetched per source, per run, over the latest runs, ordered by finish time."""
    runs = sorted(reports, key=lambda r: r.get("finished") or "", reverse=True)[:CHART_RUNS][::-1]
    names = sorted({n for r in runs for n, s in (r.get("sources") or {}).items() if s.get("status") == "ok"})
    labels = _finish_labels(runs)
    tips = [f"{r['run_id']}, finished {label} UTC" for r, label in zip(runs, labels, strict=True)]

    def per_source(key) -> dict[str, list[float]]:
        return {n: [key((r.get("sources") or {}).get(n) or {}) for r in runs] for n in names}

    images = per_source(lambda s: (s.get("images_ok") or 0) + (s.get("images_normalized") or 0))
    fetched = per_source(lambda s: (s.get("bytes_fetched") or 0) / 1e6)
    return [
        stacked_columns("Usable images per source, per run", labels, images, "", tips=tips),
        stacked_columns("Bytes fetched per source, per run", labels, fetched, " MB", tips=tips),
    ]


def source_charts(report: dict) -> list[str]:
    sources = {n: s for n, s in (report.get("sources") or {}).items() if s.get("status") == "ok"}
    images = {
        n: [s.get(f"images_{k}") or 0 for k in ("ok", "normalized", "invalid", "missing")]
        for n, s in sources.items()
    }
    fetched = {n: [(s.get("bytes_fetched") or 0) / 1e6] for n, s in sources.items()}
    return [
        horizontal_bars(
            "Images per source", images, ["ok", "normalized", "invalid", "missing (dead URL)"], ""
        ),
        horizontal_bars("Bytes fetched per source", fetched, ["fetched"], " MB"),
    ]


# ------------------------------------------------------------------------------------------------ pages


def _airflow_root(request: Request) -> str:
    """The Airflow UI's base path, from where this app is mounted (works under a base_url subpath too)."""
    return request.scope.get("root_path", "").removesuffix(URL_PREFIX) + "/"


@app.get("/", response_class=HTMLResponse)
def index(request: Request) -> str:
    store = _store()
    reports = load_reports(store)
    return TEMPLATES.get_template("index.html").render(
        runs=[run_summary(r) for r in reports],
        charts=run_charts(reports),
        store=store.url,
        quote=quote,
        airflow=_airflow_root(request),
        dag_id=DAG_ID,
        scope=VERDICT_SCOPE,
    )


@app.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: str) -> str:
    store = _store()
    key = f"runs/{run_id}/report.json"
    if not _RUN_ID.match(run_id) or store.stat(key) is None:
        raise HTTPException(status_code=404, detail=f"no {DAG_ID} report for run {run_id!r} in {store.url}")
    report = json.loads(store.read_bytes(key))
    sources = report.get("sources") or {}
    for s in sources.values():
        s["duration"] = _duration(_seconds(s.get("started"), s.get("finished")))
    return TEMPLATES.get_template("run.html").render(
        report=report,
        summary=run_summary(report),
        sources=sources,
        rt=report.get("ready_to_train") or {},
        charts=source_charts(report),
        mb=_mb,
        airflow=_airflow_root(request),
        airflow_run=f"{_airflow_root(request)}dags/{DAG_ID}/runs/{quote(run_id, safe='')}",
        dag_id=DAG_ID,
    )
