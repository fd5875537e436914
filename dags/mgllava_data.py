"""
# mgllava_data

Brings MG-LLaVA's training corpus into object storage, extracts and validates every image, and assembles manifests,
the trainer's `data/` layout and a run report.

**Per source** (one task group each, built from the catalog):
`plan` (what changed upstream?) → `fetch` (one mapped task per remote file, verified, resumable)
→ `shard` (cut archives into byte ranges) → `extract` (one mapped task per shard: safe paths, sha256, image check,
write, manifest rows) → `finalize` (merge the manifest, diff, record state, emit the source's Asset event).

**Then once**, whatever the sources' outcome: `assemble` writes `runs/<run_id>/report.json` and `report.html` and
materialises `data/` when `MGDATA_LAYOUT_DIR` is set; `verify` streams the training JSONs the catalog declares and
writes the ready-to-train verdict (per path prefix) into the report; `check_sources` fails the run when any source
failed, so the run's colour tells the truth while the report still covers everything that succeeded.

Settings come from `MGDATA_STORAGE`, `MGDATA_S3_CONN_ID`, `MGDATA_CATALOG`, `MGDATA_LAYOUT_DIR`; the params below
override them per run; `recipes` names the corpora a run serves (include/recipes/: `mgllava`, `llava-v1.5`,
`sharegpt4v`, `allava`), which selects their sources and lays out each one's tree. Runs start only when triggered, unless `MGDATA_SCHEDULE` (read at parse time, e.g. `@weekly`)
enables the scheduled refresh of every enabled source. Hugging Face sources
take their token from the Airflow connection named by `MGDATA_HF_CONN_ID` (its password; else `HF_TOKEN`) and honour
`HF_ENDPOINT`.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

from airflow.sdk import Asset, Param, TaskGroup, TriggerRule, dag, get_current_context, task

from mgdata.catalog import load_catalog
from mgdata.recipes import load_recipes
from mgdata.settings import Settings

# Parsing must stay cheap (the dag-processor re-parses constantly): the catalog and the recipes are small YAML files.
CATALOG = load_catalog(Settings.from_env().catalog)
# The recipes' names only: a catalog without some recipe's sources still parses, and a run asking for that recipe
# fails at its plan with the recipe and the sources named.
RECIPES = load_recipes()

POOLS = {
    "http": "mgdata_http",
    "huggingface": "mgdata_hf",
    "gdrive": "mgdata_gdrive",
    "urllist": "mgdata_urllist",
    "manual": "mgdata_http",
}
RETRY_DELAY = timedelta(seconds=float(os.environ.get("MGDATA_RETRY_DELAY_SECONDS", "30")))
NETWORK_RETRIES = {
    "retries": 4,
    "retry_delay": RETRY_DELAY,
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=30),
}

# Manual runs only, unless the operator enables the refresh: a scheduled run ingests every enabled source (about
# 250 GB the first time), so it must never start because a DAG was unpaused.
SCHEDULE = os.environ.get("MGDATA_SCHEDULE", "").strip() or None

# The `x-` scheme marks a URI as ours: Airflow then skips its provider lookup of URI normalizers, which otherwise
# loads every provider (boto3 included) each time a task process parses this file (~1,050 times a full run).
CORPUS = Asset(name="mgllava_data.corpus", uri="x-mgdata://corpus")


def source_asset(name: str) -> Asset:
    return Asset(name=f"mgllava_data.{name}", uri=f"x-mgdata://sources/{name}")


def _run():
    """This task's Run: one per task process, so the stages a task runs in turn share its store client and records."""
    from mgdata.ingest import Run

    context = get_current_context()
    if "mgdata_run" not in context:
        params = context["params"]
        context["mgdata_run"] = Run(
            Settings.from_env(params), context["dag_run"].run_id, force=bool(params.get("force"))
        )
    return context["mgdata_run"]


def _selection(run) -> list[str]:
    """The sources this run ingests: the `sources` param plus every source of the `recipes` asked for (the param,
    else MGDATA_RECIPES); with neither, every enabled source."""
    from mgdata.recipes import run_selection

    sources = get_current_context()["params"].get("sources") or []
    return list(run_selection(run.catalog, sources, list(run.settings.recipes), known=RECIPES))


def _in_source(source: str, step: str, fn, *args):
    """Run one stage; a skip or failure is recorded in the store so the report can say what happened."""
    from airflow.sdk.exceptions import AirflowSkipException

    from mgdata.ingest import record_failure, record_skipped
    from mgdata.run import SourceSkipped

    run = _run()
    try:
        return fn(run, source, *args)
    except SourceSkipped as e:
        record_skipped(run, source, str(e))
        raise AirflowSkipException(str(e)) from None
    except Exception as e:
        record_failure(run, source, step, e)
        raise


@task(**NETWORK_RETRIES)
def plan(source: str) -> list[dict]:
    """Compare each remote file with the last ingest (ETag, size, checksum) and decide what to fetch.

    An unchanged source is finished here and the plan task ends as skipped, so the source's fetch, shard, extract
    and finalize are skipped too: a refresh costs one task instance per unchanged source. Its summary goes to
    assemble as this task's XCom `summary` (small: counts, the plan's decisions), so it writes nothing to the
    store."""
    from airflow.sdk.exceptions import AirflowSkipException

    from mgdata.ingest import finalize_source, plan_source, unchanged

    if source not in _selection(_run()):
        raise AirflowSkipException(
            f"{source} is not in this run's selection (the `sources` and `recipes` params; disabled sources "
            "run only when named or needed by a recipe asked for)"
        )
    files = _in_source(source, "plan", plan_source)
    if not files and _in_source(source, "plan", unchanged):
        _in_source(source, "finalize", finalize_source, False)
        get_current_context()["ti"].xcom_push(key="summary", value=_run().record(source, "summary.json"))
        raise AirflowSkipException(
            f"{source} is unchanged since its last ingest: nothing to fetch or extract"
        )
    return files


@task(map_index_template="{{ file_name }}", **NETWORK_RETRIES)
def fetch(source: str, file: dict) -> dict:
    """Stream one remote file into raw/<source>/, resumable, verified against the catalog's checksums."""
    from mgdata.ingest import fetch_file

    get_current_context()["file_name"] = file["file"]
    return _in_source(source, f"fetch[{file['file']}]", fetch_file, file["file"])


@task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS, retries=2, retry_delay=RETRY_DELAY)
def shard(source: str, planned: list[dict] | None, fetched: list[dict] | None) -> list[str]:
    """Cut each archive this run extracts into contiguous byte ranges (shards) from its central directory."""
    from mgdata.ingest import plan_shards

    return _in_source(source, "shard", plan_shards)


@task(map_index_template="{{ shard_id }}", retries=2, retry_delay=RETRY_DELAY)
def extract(source: str, shard_id: str) -> dict:
    """One pass per member: safe path, sha256, image check, write under data/ (or quarantine/), manifest row."""
    from mgdata.ingest import extract_shard

    get_current_context()["shard_id"] = shard_id
    return _in_source(source, f"extract[{shard_id}]", extract_shard, shard_id)


@task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS, retries=2, retry_delay=RETRY_DELAY)
def finalize(source: str, shards: list[str] | None, extracted: list[dict] | None) -> dict:
    """Merge shard manifests into manifests/<source>.parquet, diff with the last ingest, record state."""
    from mgdata.ingest import finalize_source

    summary = _in_source(source, "finalize", finalize_source)
    get_current_context()["outlet_events"][source_asset(source)].extra = summary
    return summary


@task(trigger_rule=TriggerRule.ALL_DONE, outlets=[CORPUS], retries=2, retry_delay=RETRY_DELAY)
def assemble() -> dict:
    """Gather every source's outcome, materialise data/ if asked, and write the run report (JSON + HTML)."""
    from mgdata.report import assemble_run

    run = _run()
    selected = _selection(run)
    ti = get_current_context()["ti"]
    # an unchanged source's summary is its plan task's XCom; the other sources' are in the store
    handed = {name: ti.xcom_pull(task_ids=f"{name}.plan", key="summary") for name in selected}
    result = assemble_run(run, selected, {name: s for name, s in handed.items() if s})
    get_current_context()["outlet_events"][CORPUS].extra = result
    return result


@task(retries=2, retry_delay=RETRY_DELAY)
def verify(report: dict) -> dict:
    """Ready to train? Stream every training JSON the catalog declares: images usable under data/, samples boxed."""
    import logging

    from mgdata.report import verify_run

    verdict = verify_run(_run())
    logging.getLogger("mgdata.verify").info("ready to train: %s", verdict["note"])
    return verdict


@task(trigger_rule=TriggerRule.ALL_DONE)
def check_sources(report: dict | None, verdict: dict | None) -> None:
    """Fail the run when any source failed (or the report could not be written or verified)."""
    from airflow.sdk.exceptions import AirflowFailException

    if not report:
        raise AirflowFailException("the run report was not written; see the assemble task's log")
    if not verdict:
        raise AirflowFailException("the ready-to-train check did not finish; see the verify task's log")
    if report["failed_sources"]:
        raise AirflowFailException(
            f"sources failed: {', '.join(report['failed_sources'])}; report: {report['report']}"
        )


def source_group(name: str, kind: str, title: str):
    with TaskGroup(group_id=name, tooltip=title):
        pool = POOLS[kind]
        planned = plan.override(pool=pool)(name)
        fetched = fetch.override(pool=pool).partial(source=name).expand(file=planned)
        shards = shard(name, planned, fetched)
        # URL-list shards fetch their images inside extract: those instances share the URL-list pool.
        extract_task = extract.override(pool=POOLS["urllist"]) if kind == "urllist" else extract
        extracted = extract_task.partial(source=name).expand(shard_id=shards)
        return finalize.override(outlets=[source_asset(name)])(name, shards, extracted)


@dag(
    dag_id="mgllava_data",
    doc_md=__doc__,
    schedule=SCHEDULE,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["mgllava", "ingestion", "vision-language"],
    default_args={
        "owner": "mgllava-data",
        "retries": 2,
        "retry_delay": RETRY_DELAY,
        "retry_exponential_backoff": 2.0,
    },
    params={
        "sources": Param(
            [],
            type="array",
            items={"type": "string", "enum": list(CATALOG.sources)},
            title="Sources",
            description="Sources to ingest in this run; empty means every enabled source.",
        ),
        "recipes": Param(
            [],
            type="array",
            items={"type": "string", "enum": list(RECIPES)},
            title="Recipes",
            description="Corpora to serve from the shared store (include/recipes/): their sources are ingested "
            "and each is laid out under MGDATA_RECIPES_DIR/<name>/ with its own verdict. Empty: MGDATA_RECIPES, "
            "else MG-LLaVA's corpus.",
        ),
        "force": Param(
            False,
            type="boolean",
            title="Force re-fetch",
            description="Fetch and extract again even when nothing changed upstream.",
        ),
        "storage": Param(
            None,
            type=["null", "string"],
            title="Object store",
            description="Overrides MGDATA_STORAGE: file:///abs/path or s3://bucket/prefix.",
        ),
        "s3_conn_id": Param(
            None,
            type=["null", "string"],
            title="S3 connection",
            description="Overrides MGDATA_S3_CONN_ID: an Airflow AWS connection (endpoint_url in extra for MinIO).",
        ),
        "catalog": Param(
            None,
            type=["null", "string"],
            title="Catalog file",
            description="Overrides MGDATA_CATALOG for URLs and checksums; the task groups come from the parse-time catalog.",
        ),
        "layout_dir": Param(
            None,
            type=["null", "string"],
            title="data/ directory",
            description="Overrides MGDATA_LAYOUT_DIR: where the trainer's data/ tree is materialised.",
        ),
        "ocr_vqa_images": Param(
            None,
            type=["null", "string"],
            enum=[None, "urls", "mirror"],
            title="OCR-VQA images from",
            description="Overrides MGDATA_OCR_VQA_IMAGES (default urls): 'urls' fetches the 207,572 Amazon URLs of "
            "dataset.json, 'mirror' takes the sha256-pinned 9 GB zip of them from Hugging Face.",
        ),
    },
)
def mgllava_data():
    finals = [source_group(name, s.kind, s.title) for name, s in CATALOG.sources.items()]
    report = assemble()
    finals >> report
    check_sources(report, verify(report))


mgllava_data()
