"""The DAG file imports, is shaped as DESIGN.md says, and every pool it uses is provisioned by the deployment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    import os

    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow_home")))
    from airflow.models import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


@pytest.fixture(scope="module")
def dag(dagbag):
    return dagbag.dags["mgllava_data"]


def test_dags_import_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "mgllava_data" in dagbag.dags


def test_dag_contract(dag):
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    assert dag.tags and {"mgllava", "ingestion"} <= set(dag.tags)
    assert dag.doc_md and "mgllava_data" in dag.doc_md
    assert set(dag.params) >= {"sources", "force", "storage", "s3_conn_id", "catalog", "layout_dir"}
    for name in ("sources", "force"):
        param = dag.params.get_param(name)
        assert param.schema.get("title") and param.description


def test_one_task_group_per_catalog_source(dag):
    from mgdata.catalog import SHIPPED_CATALOG, load_catalog

    groups = set(dag.task_group.children)
    assert set(load_catalog(SHIPPED_CATALOG).sources) <= groups
    for source in load_catalog(SHIPPED_CATALOG).sources:
        ids = {t.task_id for t in dag.tasks if t.task_id.startswith(f"{source}.")}
        assert ids == {f"{source}.{step}" for step in ("plan", "fetch", "shard", "extract", "finalize")}


def test_every_task_retries_and_network_tasks_back_off(dag):
    for t in dag.tasks:
        assert t.retries >= 2, t.task_id
    for t in dag.tasks:
        if t.task_id.endswith((".plan", ".fetch")):
            assert t.retries >= 4 and t.retry_exponential_backoff, t.task_id


def test_pools_used_by_tasks_are_provisioned():
    pools = json.loads((ROOT / "include" / "pools.json").read_text())
    from airflow.models import DagBag

    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["mgllava_data"]
    used = {t.pool for t in dag.tasks} - {"default_pool"}
    assert used, "network tasks must run in per-host pools"
    assert used <= set(pools), f"pools used but not provisioned: {used - set(pools)}"
    fetch_pools = {t.task_id.split(".")[0]: t.pool for t in dag.tasks if t.task_id.endswith(".fetch")}
    assert fetch_pools["coco"] == "mgdata_http" and fetch_pools["llava_pretrain"] == "mgdata_hf"
    assert fetch_pools["wikiart"] == "mgdata_gdrive"


def test_final_tasks_run_whatever_the_sources_did(dag):
    assemble = dag.get_task("assemble")
    check = dag.get_task("check_sources")
    assert assemble.trigger_rule == "all_done" and check.trigger_rule == "all_done"
    assert {f"{s}.finalize" for s in ("coco", "gqa")} <= assemble.upstream_task_ids
    assert check.downstream_task_ids == set(), "check_sources must be the leaf that sets the run's state"
    assert [a.name for a in assemble.outlets] == ["mgllava_data.corpus"]
    assert [a.name for a in dag.get_task("coco.finalize").outlets] == ["mgllava_data.coco"]
