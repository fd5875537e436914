"""Run settings: every `MGDATA_` environment variable in one place, with defaults.

| variable            | meaning                                                              | default                          |
|---------------------|----------------------------------------------------------------------|----------------------------------|
| `MGDATA_STORAGE`    | the object store: `file:///abs/path` or `s3://bucket/prefix`         | `file://$AIRFLOW_HOME/mgdata-store` |
| `MGDATA_S3_CONN_ID` | Airflow AWS connection for S3 (`endpoint_url` in its extra for MinIO) | unset: boto3's default chain     |
| `MGDATA_CATALOG`    | the catalog file                                                     | the shipped `include/catalog.yaml` |
| `MGDATA_LAYOUT_DIR` | where a local `data/` tree is materialised                           | unset: no local tree             |

The DAG's params `storage`, `s3_conn_id`, `catalog` and `layout_dir` override these per run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mgdata.catalog import SHIPPED_CATALOG, Catalog, load_catalog
from mgdata.storage import Store, open_store, s3_client


def default_storage_url() -> str:
    home = Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow")
    return (home / "mgdata-store").resolve().as_uri()


@dataclass(frozen=True)
class Settings:
    storage: str
    catalog: str
    s3_conn_id: str | None = None
    layout_dir: str | None = None

    @classmethod
    def from_env(cls, overrides: dict | None = None) -> Settings:
        o = {k: v for k, v in (overrides or {}).items() if v not in (None, "")}
        return cls(
            storage=o.get("storage") or os.environ.get("MGDATA_STORAGE") or default_storage_url(),
            catalog=o.get("catalog") or os.environ.get("MGDATA_CATALOG") or str(SHIPPED_CATALOG),
            s3_conn_id=o.get("s3_conn_id") or os.environ.get("MGDATA_S3_CONN_ID") or None,
            layout_dir=o.get("layout_dir") or os.environ.get("MGDATA_LAYOUT_DIR") or None,
        )

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
