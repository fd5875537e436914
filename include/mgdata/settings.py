"""Run settings: every environment variable the pipeline reads, in one table (`VARIABLES`), with its default.

`VARIABLES` is what the docs' settings reference is generated from, and a test checks it against every variable the
code reads, so the table cannot drift. The DAG's params `storage`, `s3_conn_id`, `catalog`, `layout_dir`,
`ocr_vqa_images` and `recipes` override the matching variable for one run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mgdata.catalog import SHIPPED_CATALOG, Catalog, load_catalog
from mgdata.storage import Store, open_store, s3_client


@dataclass(frozen=True)
class Variable:
    """One environment variable: what it sets, its default, and the part of the system that reads it."""

    name: str
    meaning: str
    default: str
    read_by: str


VARIABLES: tuple[Variable, ...] = (
    Variable(
        "MGDATA_STORAGE",
        "the object store: `file:///abs/path` or `s3://bucket/prefix`",
        "`file://$AIRFLOW_HOME/mgdata-store`",
        "settings",
    ),
    Variable(
        "MGDATA_S3_CONN_ID",
        "Airflow AWS connection for S3; `endpoint_url` in its extra for MinIO",
        "unset: boto3's default chain",
        "settings",
    ),
    Variable(
        "AWS_ENDPOINT_URL_S3",
        "the S3 endpoint when no connection is named (boto3's own variable)",
        "unset: AWS",
        "settings",
    ),
    Variable(
        "MGDATA_CATALOG",
        "the catalog file (tests and the demo swap the whole file)",
        "the shipped `include/catalog.yaml`",
        "settings",
    ),
    Variable(
        "MGDATA_LAYOUT_DIR",
        "where the trainer's `data/` tree is materialised after each run",
        "unset: no local tree",
        "settings",
    ),
    Variable(
        "MGDATA_RECIPES",
        "the recipes a run serves (comma-separated, `include/recipes/<name>.yaml`): their sources are ingested and "
        "each is laid out under `MGDATA_RECIPES_DIR/<name>/`",
        "unset: every enabled source, MG-LLaVA's corpus",
        "settings",
    ),
    Variable(
        "MGDATA_RECIPES_DIR",
        "where the trees of the recipes a run serves are laid out, one folder per recipe (MG-LLaVA's is "
        "`MGDATA_LAYOUT_DIR`)",
        "`recipes/` beside `MGDATA_LAYOUT_DIR`; unset with it: no recipe trees",
        "settings",
    ),
    Variable(
        "MGDATA_OCR_VQA_IMAGES",
        "OCR-VQA's images from `urls` (dataset.json's Amazon URLs) or the `mirror` zip",
        "`urls`",
        "settings",
    ),
    Variable(
        "MGDATA_SCHEDULE",
        "the refresh schedule (`@weekly`, a cron expression), read when the DAG is parsed",
        "unset: runs start only when triggered",
        "dag",
    ),
    Variable(
        "MGDATA_RETRY_DELAY_SECONDS", "first retry delay of every task (doubles per try)", "`30`", "dag"
    ),
    Variable(
        "MGDATA_EXTRACT_THREADS",
        "threads per extract task (inflate, hash, decode, store writes); 2 when a worker runs one extract per core",
        "twice the usable cores (the affinity mask)",
        "extract",
    ),
    Variable(
        "MGDATA_EXTRACT_PROCESSES",
        "worker processes a zip shard of 32 MiB or more is cut among on a local-folder store (forked, each with"
        " its own range of the shard, sharing the task's threads out); 1: threads only",
        "the cores, at most `MGDATA_EXTRACT_THREADS`",
        "extract",
    ),
    Variable(
        "MGDATA_DECODE_MPIXELS",
        "million pixels decoded at once per extract task (the decode memory budget)",
        "the per-image limit, 89.5",
        "extract",
    ),
    Variable(
        "MGDATA_FETCH_CONNECTIONS",
        "most ranged GETs at once per big file (starts at 8, doubles while throughput grows); 1: one stream",
        "`32`",
        "fetch.http",
    ),
    Variable("MGDATA_FETCH_PART_MIB", "MiB per ranged GET", "the store's multipart part size", "fetch.http"),
    Variable(
        "MGDATA_FETCH_PARALLEL_MIN_MIB",
        "files of at least this size are fetched in parallel when the mirror honours ranges",
        "`64`",
        "fetch.http",
    ),
    Variable(
        "MGDATA_HF_CONN_ID",
        "Airflow connection whose password is the Hugging Face token",
        "unset: `HF_TOKEN`, else anonymous",
        "settings",
    ),
    Variable(
        "HF_TOKEN", "the Hugging Face token when no connection is named", "unset: anonymous", "settings"
    ),
    Variable(
        "HF_ENDPOINT",
        "the Hugging Face Hub endpoint (a mirror's `endpoint` in the catalog overrides it)",
        "`https://huggingface.co`",
        "fetch.huggingface",
    ),
    Variable(
        "MGDATA_GDRIVE_URL",
        "Google Drive's base URL (tests and the demo point it at a stand-in)",
        "`https://drive.google.com`",
        "fetch.gdrive",
    ),
    Variable(
        "MGDATA_GDRIVE_COOKIES",
        "a Netscape cookies file of a signed-in Google account; lifts most quota lockouts; never logged",
        "unset: no cookies",
        "fetch.gdrive",
    ),
)


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask: a cpuset in a container), else the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def env_int(variable: str, default: int, *, minimum: int = 1) -> int:
    """A whole-number setting from the environment (unset or empty: `default`); a bad value is an error naming it."""
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{variable} must be a whole number (got {raw!r})") from None
    if value < minimum:
        raise ValueError(f"{variable} must be at least {minimum} (got {value})")
    return value


def _names(raw: str) -> list[str]:
    return [n.strip() for n in raw.split(",") if n.strip()]


def default_storage_url() -> str:
    home = Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow")
    return (home / "mgdata-store").resolve().as_uri()


@dataclass(frozen=True)
class Settings:
    storage: str
    catalog: str
    s3_conn_id: str | None = None
    layout_dir: str | None = None
    ocr_vqa_images: str = "urls"  # "urls" | "mirror": OCR-VQA's path to its images in this run
    recipes: tuple[str, ...] = ()  # the recipes this run serves (their sources; their trees)
    recipes_dir: str | None = None  # their trees' parent folder

    @classmethod
    def from_env(cls, overrides: dict | None = None) -> Settings:
        o = {k: v for k, v in (overrides or {}).items() if v not in (None, "")}
        return cls(
            storage=o.get("storage") or os.environ.get("MGDATA_STORAGE") or default_storage_url(),
            catalog=o.get("catalog") or os.environ.get("MGDATA_CATALOG") or str(SHIPPED_CATALOG),
            s3_conn_id=o.get("s3_conn_id") or os.environ.get("MGDATA_S3_CONN_ID") or None,
            layout_dir=o.get("layout_dir") or os.environ.get("MGDATA_LAYOUT_DIR") or None,
            ocr_vqa_images=o.get("ocr_vqa_images") or os.environ.get("MGDATA_OCR_VQA_IMAGES") or "urls",
            recipes=tuple(o.get("recipes") or _names(os.environ.get("MGDATA_RECIPES", ""))),
            recipes_dir=o.get("recipes_dir") or os.environ.get("MGDATA_RECIPES_DIR") or None,
        )

    def recipe_root(self, name: str) -> Path | None:
        """Where a served recipe's tree is laid out: `<recipes_dir>/<name>`, by default `recipes/` beside the
        layout dir (MG-LLaVA's tree is the layout dir's parent); None when neither is set."""
        if self.recipes_dir:
            return Path(self.recipes_dir) / name
        if self.layout_dir:
            return Path(self.layout_dir).resolve().parent / "recipes" / name
        return None

    def manifest_copies(self) -> Path | None:
        """Where assemble and verify keep local copies of the manifests of a remote store, named by their ETag:
        `.mgdata/manifests/` beside the layout dir (on the volume every worker mounts); None without a layout dir."""
        if self.layout_dir:
            return Path(self.layout_dir).resolve().parent / ".mgdata" / "manifests"
        return None

    def __post_init__(self) -> None:
        if self.ocr_vqa_images not in ("urls", "mirror"):
            raise ValueError(f"ocr_vqa_images must be 'urls' or 'mirror' (got {self.ocr_vqa_images!r})")

    def load_catalog(self) -> Catalog:
        return load_catalog(self.catalog)

    def open_store(self, *, concurrency: int = 16) -> Store:
        if not self.storage.startswith("s3://"):
            return open_store(self.storage)
        return open_store(
            self.storage,
            client=_s3_client_for(self.s3_conn_id, concurrency),
            max_concurrency=min(concurrency, 8),
        )


def _s3_client_for(conn_id: str | None, concurrency: int):
    """Credentials and endpoint come only from the Airflow connection (or boto3's own chain when none is named)."""
    pool = max(32, 2 * concurrency)
    if not conn_id:
        return s3_client(
            endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or None, max_pool_connections=pool
        )
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id=conn_id)
    conn = hook.conn_config
    return s3_client(
        session=hook.get_session(region_name=conn.region_name),
        endpoint_url=conn.get_service_endpoint_url("s3"),
        region_name=conn.region_name,
        max_pool_connections=pool,
        config=conn.botocore_config,
    )


def hf_token() -> str | None:
    """The Hugging Face token: the password of the Airflow connection `MGDATA_HF_CONN_ID`, else `HF_TOKEN`, else None.

    Read at call time (a task may run long after the worker started); callers put it in an Authorization header
    and never log it.
    """
    conn_id = os.environ.get("MGDATA_HF_CONN_ID")
    if conn_id:
        from airflow.sdk import BaseHook

        return BaseHook.get_connection(conn_id).password or None
    return os.environ.get("HF_TOKEN") or None
