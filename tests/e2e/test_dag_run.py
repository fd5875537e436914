"""The whole DAG, end to end: `airflow dags test mgllava_data` on SQLite against the generated offline mirror.

Each run is a real `airflow dags test` subprocess (the command users run), with the store on a local folder or on S3
(moto's server on loopback, credentials through an Airflow connection in the environment).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mgdata import manifest
from mgdata.catalog import load_catalog
from mgdata.manifest import row_schema
from mgdata.report import REPORT_SCHEMA
from mgdata.storage import open_store, s3_client
from offline_mirror.build import build_mirror, stand_in_routes, write_catalog
from offline_mirror.server import MirrorServer

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
SECRET = "s3cr3t-key-never-logged"


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    root = tmp_path_factory.mktemp("mirror")
    replicas = build_mirror(root, images_per_source=30)
    # One server for the HTTP replicas and the Hub stand-in; the catalog points the Hub mirrors at it (`endpoint`).
    # The Drive and image-host stand-ins too (MGDATA_GDRIVE_URL points the gdrive adapter at them).
    server = MirrorServer(root, routes=stand_in_routes(root)).start()
    catalog = write_catalog(root, server.base_url, replicas, shard_bytes=1024 * 1024)
    expected: dict[str, dict] = defaultdict(
        lambda: {"images": 0, "broken": 0, "normalized": 0, "missing": 0, "bytes": 0, "files": 0}
    )
    for r in replicas:
        e = expected[r.source]
        e["images"] += r.images
        e["broken"] += r.broken
        e["normalized"] += r.normalized
        e["missing"] += r.missing  # OCR-VQA's dead URLs
        e["bytes"] += (root / r.relpath).stat().st_size  # as served (OCR-VQA's URL list is rewritten)
        e["files"] += 1
    # A run without recipes ingests the enabled sources; the other recipes' own sources (sam_sft, their JSONs) wait
    # for a run that asks for their recipe.
    enabled = {n for n, s in load_catalog(catalog).sources.items() if s.enabled}
    yield SimpleNamespace(
        root=root,
        server=server,
        catalog=catalog,
        expected={n: e for n, e in expected.items() if n in enabled},
        everything=dict(expected),
    )
    server.stop()


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow")
    env = _env(home)
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    return home


def _env(home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MGDATA_", "AIRFLOW"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(ROOT / "plugins"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        MGDATA_RETRY_DELAY_SECONDS="0",
    )
    env.update(extra)
    return env


def run_dag(home: Path, conf: dict | None = None, **env: str) -> subprocess.CompletedProcess:
    cmd = [AIRFLOW, "dags", "test", "mgllava_data"] + (["-c", json.dumps(conf)] if conf else [])
    return subprocess.run(cmd, env=_env(home, **env), capture_output=True, text=True, timeout=900)


def task_states(home: Path, run_id: str, **env: str) -> dict[str, str]:
    """task id -> state of one DAG run's task instances (mapped instances: the last one listed)."""
    cmd = [AIRFLOW, "tasks", "states-for-dag-run", "mgllava_data", run_id, "--output", "json"]
    out = subprocess.run(cmd, env=_env(home, **env), capture_output=True, text=True, timeout=300, check=True)
    return {row["task_id"]: row["state"] for row in json.loads(out.stdout)}


def latest_report(store) -> dict:
    keys = sorted(o.key for o in store.list("runs/") if o.key.endswith("/report.json"))
    assert keys, "no report written"
    return json.loads(store.read_bytes(keys[-1]))


def assert_outputs_match_schemas(store) -> int:
    """Every report.json of the store validates against the published report schema, and every manifest row against
    the manifest schema (the docs' reference pages are made from both). Returns the number of reports checked."""
    report_validator = jsonschema.Draft202012Validator(json.loads(REPORT_SCHEMA.read_text()))
    reports = [o.key for o in store.list("runs/") if o.key.endswith("/report.json")]
    for key in reports:
        errors = [
            f"{e.json_path}: {e.message}"
            for e in report_validator.iter_errors(json.loads(store.read_bytes(key)))
        ]
        assert not errors, f"{key} does not match report.schema.json:\n" + "\n".join(errors[:20])
    row_validator = jsonschema.Draft202012Validator(row_schema())
    for o in store.list("manifests/"):
        if o.key.endswith(".parquet") and "/parts/" not in o.key:
            for row in pq.read_table(io.BytesIO(store.read_bytes(o.key))).to_pylist():
                errors = [f"{e.json_path}: {e.message}" for e in row_validator.iter_errors(row)]
                assert not errors, f"{o.key} row {row['path']!r}: " + "; ".join(errors)
    return len(reports)


def test_the_report_schema_admits_no_field_it_does_not_name():
    """An extra key anywhere the schema describes a fixed object fails validation: a field added to the code and
    not to the schema cannot pass `assert_outputs_match_schemas` unnoticed."""
    validator = jsonschema.Draft202012Validator(json.loads(REPORT_SCHEMA.read_text()))
    validator.check_schema(validator.schema)
    source = {
        "source": "ai2d", "title": "AI2D", "kind": "http", "status": "ok", "error": None, "files_fetched": 1,
        "bytes_fetched": 10, "images_ok": 1, "images_invalid": 0, "images_normalized": 0, "expected_images": 1,
        "run_id": "r", "finished": "2026-01-01T00:00:00+00:00",
    }  # fmt: skip
    ready = {"checked": False, "ready": False, "note": "pending", "referenced": 0, "present": 0, "missing": 0,
             "missing_by_prefix": {}, "ids_without_boxes": 0}  # fmt: skip
    report = {
        "run_id": "r", "status": "success", "failed_sources": [], "finished": "2026-01-01T00:00:00+00:00",
        "store": "file:///s", "catalog": "c.yaml", "force": False, "sources": {"ai2d": source},
        "totals": {k: 0 for k in ("files_fetched", "bytes_fetched", "images_ok", "images_invalid",
                                  "images_normalized")},
        "layout": None, "quarantine": [], "quarantine_total": 0, "ready_to_train": ready,
    }  # fmt: skip
    assert validator.is_valid(report)
    for where in (report, source, ready, report["totals"]):
        where["added_by_the_code"] = 1
        assert not validator.is_valid(report), where
        del where["added_by_the_code"]
    row = {"path": "a.jpg", "bytes": 1, "sha256": "0" * 64, "format": "JPEG", "width": 1, "height": 1,
           "status": "ok", "error": None, "origin": "raw/a/b.zip!a.jpg", "run_id": "r"}  # fmt: skip
    manifest = jsonschema.Draft202012Validator(row_schema())
    assert manifest.is_valid(row) and not manifest.is_valid(row | {"extra": 1})
    assert not manifest.is_valid(row | {"status": "fine"})


def table_paths(store, source: str) -> list[str]:
    return pq.read_table(io.BytesIO(store.read_bytes(f"manifests/{source}.parquet")))["path"].to_pylist()


def assert_first_run(report: dict, expected: dict, store) -> None:
    assert report["status"] == "success", report["failed_sources"]
    for name, e in expected.items():
        s = report["sources"][name]
        assert s["status"] == "ok", (name, s.get("error"))
        assert s["files_fetched"] == e["files"]
        assert s["bytes_fetched"] == e["bytes"]
        assert s["images_ok"] + s["images_normalized"] == e["images"], name
        assert s["images_normalized"] == e["normalized"], name
        assert s["images_invalid"] == e["broken"], name
        assert s["expected_images"] == (e["images"] or None)  # None: the annotation JSONs hold no images
        table = pq.read_table(io.BytesIO(store.read_bytes(f"manifests/{name}.parquet")))
        assert table.num_rows == e["images"] + e["broken"] + e["missing"]
        assert table.column_names == [
            "path",
            "bytes",
            "sha256",
            "format",
            "width",
            "height",
            "status",
            "error",
            "origin",
            "run_id",
        ]
    skipped = {n: s for n, s in report["sources"].items() if s["status"] == "skipped"}
    assert {"llava_pretrain", "allava_laion", "allava_vflan", "mgllava_annotations"} <= set(expected)
    assert {"share_textvqa", "web_celebrity", "web_landmark", "wikiart", "dvqa", "ocr_vqa"} <= set(expected)
    # DocVQA needs registration: skipped (not failed), with the catalog's instructions as the reason
    assert set(skipped) == {"docvqa"}
    assert skipped["docvqa"]["error"].startswith("Register at https://rrc.cvc.uab.es/?ch=17")
    # the quarantine lists every broken member with its reason
    assert report["quarantine_total"] == sum(e["broken"] for e in expected.values())
    assert all(q["error"] for q in report["quarantine"])


def local_env(mirror, store_url: str, layout: Path) -> dict:
    """A run on a local-folder store against the mirror, its data/ tree at `layout`."""
    return {
        "MGDATA_STORAGE": store_url,
        "MGDATA_CATALOG": str(mirror.catalog),
        "MGDATA_GDRIVE_URL": f"{mirror.server.base_url}/drive.google.com",
        "MGDATA_LAYOUT_DIR": str(layout),
    }


def test_local_store_run_then_unchanged_refresh(mirror, airflow_home, tmp_path):
    store_url, layout = (tmp_path / "store").as_uri(), tmp_path / "data"
    env = local_env(mirror, store_url, layout)
    first = run_dag(airflow_home, **env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    store = open_store(store_url)
    report = latest_report(store)
    assert_first_run(report, mirror.expected, store)

    # The trainer's data/ tree: every usable image is there (hardlinked from the store), and decodes.
    files = sorted(p.relative_to(layout).as_posix() for p in layout.rglob("*") if p.is_file())
    assert len(files) == sum(e["images"] for e in mirror.expected.values())
    assert {f.split("/")[0] for f in files} == {
        "coco", "gqa", "textvqa", "vg", "ai2d", "LLaVA-Pretrain", "allava_laion", "allava_vflan",
        "share_textvqa", "web-celebrity", "web-landmark", "wikiart", "dvqa", "ocr_vqa",
    }  # fmt: skip
    # WikiArt's escaped-Unicode names land exactly as the annotation JSONs spell them (P17); OCR-VQA is all .jpg
    assert "wikiart/images/arnold-b#U00e3#U00b6cklin_the-isle-of-the-dead-1880.jpg" in files
    assert all(f.endswith(".jpg") for f in files if f.startswith("ocr_vqa/images/"))
    assert any(f.startswith("dvqa/images/bar_") and f.count("/") == 2 for f in files)
    assert any(f.startswith("allava_vflan/images/images_191task_1k/") for f in files)
    # MG-LLaVA's JSONs next to data/, where a config's data_path / box_json_path point (relative to the repo root)
    notes = tmp_path / "annotations"
    assert sorted(p.relative_to(notes).as_posix() for p in notes.rglob("*.json")) == [
        "bbox_json/train/instruct_llava_allava_doc_dvqa_share_ai2d_1383k_only_box.json",
        "bbox_json/train/pretrain_blip_allava_1266k_only_box.json",
        "blip_laion_cc_sbu_558k.json",
        "llava_v1_5_mix665k.json",
        "train_json/instruct_llava_allava_doc_dvqa_share_ai2d_1383k.json",
        "train_json/pretrain_blip_allava_1266k.json",
    ]
    cited = {
        s["image"]
        for s in json.loads((notes / "train_json/pretrain_blip_allava_1266k.json").read_text())
        if "image" in s
    }
    assert cited <= set(files)
    assert any(f.startswith("coco/train2017/") for f in files) and any(
        f.startswith("vg/VG_100K_2/") for f in files
    )
    assert not any("annotations" in f or "__MACOSX" in f for f in files)
    sample = layout / files[0]
    assert sample.stat().st_ino == store.local_path(f"data/{files[0]}").stat().st_ino
    for f in files[:: max(1, len(files) // 20)]:
        with Image.open(layout / f) as im:
            im.load()
    page = (tmp_path / "store" / "runs" / report["run_id"] / "report.html").read_text()
    assert page.count("<tr") > 6
    # Ready to train? Not while DocVQA is skipped: the instruct JSON cites docvqa/images like the real 1383K JSON, and
    # the verdict says which prefix is missing and why; everything else the JSONs cite is usable and boxed
    ready = report["ready_to_train"]
    docs = ready["by_prefix"]["docvqa/images"]["referenced"]
    assert ready["checked"] and not ready["ready"] and docs > 0
    assert ready["note"].startswith(
        f"not ready: {docs} docvqa/images missing: source docvqa skipped (Register at https://rrc.cvc.uab.es/?ch=17"
    ), ready["note"]
    assert ready["referenced"] == ready["present"] + docs and ready["text_only"] >= 2
    assert ready["missing"] == docs and ready["broken"] == ready["ids_without_boxes"] == 0
    assert {r for r, f in ready["findings"].items() if f["count"]} == {"image_missing"}
    assert len(ready["by_prefix"]) == 16  # the 15 instruct prefixes + LLaVA-Pretrain/images
    assert [f["status"] for f in ready["files"]] == ["checked"] * 3
    assert ready["by_prefix"]["coco/train2017"]["source"] == "coco" and "Ready to train" in page
    coco = report["sources"]["coco"]
    assert coco["diff"]["added"] == len(table_paths(store, "coco")) and coco["diff_since"] is None
    assert coco["diff_paths"]["added"] == sorted(table_paths(store, "coco"))[:10]
    # how many images each of OCR-VQA's paths produced: the URL list in this run, the mirror zip never
    paths = report["sources"]["ocr_vqa"]["by_file"]
    assert paths["dataset.json"]["used"] and not paths["ocr_vqa_images_llava_v15.zip"]["used"]
    used = paths["dataset.json"]
    assert used["ok"] + used["normalized"] == mirror.expected["ocr_vqa"]["images"]
    assert "Images per path" in page

    manifests = {o.key: store.read_bytes(o.key) for o in store.list("manifests/") if "/parts/" not in o.key}
    # The one step the demo names: provide DocVQA's archive (the mirror's stand-in for it) in the store's inbox
    store.put_file("inbox/docvqa/train.tar.gz", mirror.root / "datasets.cvc.uab.es/rrc/DocVQA/train.tar.gz")
    second = run_dag(airflow_home, **env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    again = latest_report(store)
    assert again["run_id"] != report["run_id"]
    for name in mirror.expected:
        s = again["sources"][name]
        assert (s["status"], s["files_fetched"], s["bytes_fetched"]) == ("ok", 0, 0), name
        assert s["diff"] == {"added": 0, "removed": 0, "changed": 0}
        assert s["diff_paths"] == {"added": [], "removed": [], "changed": []}
        assert s["diff_since"] == report["run_id"], name
    assert again["sources"]["docvqa"]["status"] == "ok"
    # An unchanged source writes no record: its summary reaches the report as its plan task's XCom
    recorded = {o.key.split("/")[3] for o in store.list(f"runs/{again['run_id']}/sources/")}
    assert recorded == {"docvqa", "ocr_vqa"}, recorded
    assert again["ready_to_train"]["ready"], again["ready_to_train"]["note"]
    assert again["ready_to_train"]["note"].startswith("ready to train")
    assert assert_outputs_match_schemas(store) == 2
    # An unchanged source ends at its plan: fetch, shard, extract and finalize never start. OCR-VQA is not unchanged
    # (its dead URLs are tried again), so its group runs through finalize.
    states = task_states(airflow_home, again["run_id"], **env)
    for name in mirror.expected:
        ran = {t: s for t, s in states.items() if t.startswith(f"{name}.") and s == "success"}
        if name == "ocr_vqa":
            assert {"ocr_vqa.plan", "ocr_vqa.shard", "ocr_vqa.finalize"} <= set(ran), ran
        else:
            assert ran == {}, (name, ran)
            assert states[f"{name}.plan"] == states[f"{name}.finalize"] == "skipped", name
    # OCR-VQA's refresh fetches its dead URLs again: their rows carry the new run id
    manifests.pop("manifests/ocr_vqa.parquet")
    assert {
        o.key: store.read_bytes(o.key)
        for o in store.list("manifests/")
        if "/parts/" not in o.key and o.key != "manifests/ocr_vqa.parquet" and "docvqa" not in o.key
    } == manifests


def test_s3_store_run_then_unchanged_refresh(mirror, airflow_home, moto_endpoint):
    client = s3_client(
        endpoint_url=moto_endpoint,
        aws_access_key_id="AKIAE2E",
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )
    client.create_bucket(Bucket="mgdata-e2e")
    conn = {
        "conn_type": "aws",
        "login": "AKIAE2E",
        "password": SECRET,
        "extra": {"endpoint_url": moto_endpoint, "region_name": "us-east-1"},
    }
    env = {
        "MGDATA_STORAGE": "s3://mgdata-e2e/store",
        "MGDATA_S3_CONN_ID": "mgdata_s3",
        "AIRFLOW_CONN_MGDATA_S3": json.dumps(conn),
        "MGDATA_CATALOG": str(mirror.catalog),
        "MGDATA_GDRIVE_URL": f"{mirror.server.base_url}/drive.google.com",
    }
    first = run_dag(airflow_home, **env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert SECRET not in first.stdout + first.stderr
    store = open_store("s3://mgdata-e2e/store", client=client)
    report = latest_report(store)
    assert report["store"] == "s3://mgdata-e2e/store"
    assert_first_run(report, mirror.expected, store)
    data = [o for o in store.list("data/")]
    assert len(data) == sum(e["images"] for e in mirror.expected.values())
    assert store.stat("raw/coco/train2017.zip").size == mirror.expected["coco"]["bytes"]
    assert "docvqa/images missing: source docvqa skipped" in report["ready_to_train"]["note"]

    second = run_dag(airflow_home, **env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    again = latest_report(store)
    assert sum(s["bytes_fetched"] for s in again["sources"].values()) == 0


def test_failed_source_fails_the_run_but_the_others_are_assembled(mirror, airflow_home, tmp_path):
    import yaml

    catalog = yaml.safe_load(mirror.catalog.read_text())
    catalog["sources"]["ai2d"]["files"][0]["mirrors"] = [mirror.server.url("gone/ai2d-all.zip")]
    broken = tmp_path / "catalog.yaml"
    broken.write_text(yaml.safe_dump(catalog))
    store_url = (tmp_path / "store").as_uri()
    result = run_dag(
        airflow_home, {"sources": ["ai2d", "textvqa"]}, MGDATA_STORAGE=store_url, MGDATA_CATALOG=str(broken)
    )
    assert result.returncode != 0, "a failed source must fail the run"
    report = latest_report(open_store(store_url))
    assert report["status"] == "failed" and report["failed_sources"] == ["ai2d"]
    assert assert_outputs_match_schemas(open_store(store_url)) == 1
    assert set(report["sources"]) == {"ai2d", "textvqa"}
    assert report["sources"]["textvqa"]["status"] == "ok"
    assert (
        "ai2d" in report["sources"]["ai2d"]["error"]
        and "gone/ai2d-all.zip" in report["sources"]["ai2d"]["error"]
    )


def test_one_store_serves_every_recipe_each_image_held_once(mirror, airflow_home, tmp_path):
    """A run asked for all four recipes ingests the union of their sources into one store, lays out each recipe's
    tree from the same objects (hardlinks: every image's bytes once), and gives each its own verdict."""
    store_url, layout = (tmp_path / "store").as_uri(), tmp_path / "data"
    env = local_env(mirror, store_url, layout)
    store = open_store(store_url)
    store.put_file("inbox/docvqa/train.tar.gz", mirror.root / "datasets.cvc.uab.es/rrc/DocVQA/train.tar.gz")
    recipes = ["mgllava", "llava-v1.5", "sharegpt4v", "allava"]
    run = run_dag(airflow_home, {"recipes": recipes}, **env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = latest_report(store)
    assert report["status"] == "success", report["failed_sources"]
    assert set(report["sources"]) == set(mirror.everything) | {
        "docvqa"
    }  # the union of the four recipes' sources
    for name in recipes:
        verdict = report["recipes"][name]
        assert verdict["served"] and verdict["ready"], (name, verdict["note"])
    share = report["recipes"]["sharegpt4v"]["stages"]
    assert [(s["stage"], s["checked"]) for s in share] == [
        ("finetune", True),
        ("pretrain", False),
    ]  # optional
    assert report["recipes"]["llava-v1.5"]["stages"][1]["text_only"] > 0

    # Each recipe's tree, in its trainer's folder names, beside MG-LLaVA's data/
    trees = report["recipe_trees"]
    assert set(trees) == {"llava-v1.5", "sharegpt4v", "allava"}
    for name, tree in trees.items():
        assert tree["root"] == str(tmp_path / "recipes" / name) and tree["files"] > 0
        assert set(tree["jsons"].values()) <= {"linked", "absent"}
    share_root = tmp_path / "recipes" / "sharegpt4v"
    assert (share_root / "data/llava/llava_pretrain/images").is_dir() and (
        share_root / "data/sam/images"
    ).is_dir()
    assert (
        share_root / "data/sharegpt4v/sharegpt4v_mix665k_cap23k_coco-ap9k_lcs3k_sam9k_div2k.json"
    ).is_file()
    assert (tmp_path / "recipes/llava-v1.5/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json").is_file()
    assert (tmp_path / "recipes/allava/allava_laion/ALLaVA-Caption-LAION-4V.json").is_file()

    # One copy of the bytes: every file of every tree is a hardlink of a store object
    store_files = [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    store_inodes = {p.stat().st_ino for p in store_files}
    tree_files = [
        p for root in (layout, *(tmp_path / "recipes").iterdir()) for p in root.rglob("*") if p.is_file()
    ]
    assert len(tree_files) > sum(t["files"] for t in trees.values())
    assert {p.stat().st_ino for p in tree_files} <= store_inodes
    data_bytes = sum(p.stat().st_size for p in (tmp_path / "store" / "data").rglob("*") if p.is_file())
    usable = 0
    for name in report["sources"]:
        table = pq.read_table(io.BytesIO(store.read_bytes(f"manifests/{name}.parquet")))
        usable += sum(manifest.usable(table)["bytes"].to_pylist())
    assert data_bytes == usable  # the store's images are exactly the union of the sources' usable images
    assert assert_outputs_match_schemas(store) == 1
