"""The Hugging Face sources against the Hub stand-in on loopback (offline_mirror.hub): real HTTP, the routes
huggingface_hub calls, and every ingest stage (plan → fetch → shard → extract → finalize) into a local store.

The mirror is built once per module with a few images per source; each test gets its own store and, where it changes
the Hub (a moved revision, a corrupted blob), its own copy of the stand-in's state.
"""

from __future__ import annotations

import copy
import json
import logging
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from mgdata.catalog import load_catalog, parse_catalog
from mgdata.fetch import FetchError
from mgdata.fetch import huggingface as hf
from mgdata.fetch.http import ChecksumMismatch
from mgdata.ingest import Run, fetch_file, ingest_source, plan_source
from mgdata.settings import Settings
from mgdata.storage import LocalStore
from offline_mirror.build import build_mirror, write_catalog
from offline_mirror.hub import HUB_SOURCES, HubStandIn
from offline_mirror.server import Fault, MirrorServer

IMAGES = 10
TOKEN = "hf_s3cr3tT0kenNeverLogged"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("hubmirror")
    replicas = build_mirror(root, images_per_source=IMAGES, sources=["coco", *HUB_SOURCES])
    return SimpleNamespace(root=root, replicas=replicas, repos=copy.deepcopy(HubStandIn(root).repos))


@pytest.fixture
def hub(built, tmp_path, monkeypatch):
    """A fresh stand-in over the module's mirror, a catalog pointing at it, and a per-test store."""
    monkeypatch.delenv("MGDATA_HF_CONN_ID", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    standin = HubStandIn(built.root)
    standin.repos = copy.deepcopy(built.repos)
    with MirrorServer(built.root, routes=standin.routes()) as server:
        catalog = write_catalog(built.root, server.base_url, built.replicas, out=tmp_path / "catalog.yaml")
        store = tmp_path / "store"
        yield SimpleNamespace(
            standin=standin, server=server, catalog=catalog, store=LocalStore(store), tmp=tmp_path,
            settings=Settings(storage=store.as_uri(), catalog=str(catalog)), replicas=built.replicas,
        )  # fmt: skip


def ingest(h, source: str, run_id: str, **kw) -> dict:
    return ingest_source(Run(h.settings, run_id, **kw), source)


def data_paths(store: LocalStore, prefix: str) -> list[str]:
    return sorted(o.key[len("data/") :] for o in store.list(f"data/{prefix}"))


def resolves(h, what: str) -> list[tuple[str, str]]:
    return [(m, p) for m, p, _ in h.server.requests if "/resolve/" in p and what in p and m == "GET"]


# --- each source shape --------------------------------------------------------------------------------------------


def test_llava_pretrain_zip_without_a_root_folder_lands_under_its_target(hub):
    summary = ingest(hub, "llava_pretrain", "r1")
    assert (summary["status"], summary["files_fetched"]) == ("ok", 2)
    assert (summary["images_ok"], summary["images_invalid"]) == (IMAGES, 1)  # one scrape cut short
    paths = data_paths(hub.store, "LLaVA-Pretrain/images/")
    assert len(paths) == IMAGES
    assert all(
        len(p.split("/")) == 4 and p.split("/")[2].isdigit() for p in paths
    )  # LLaVA-Pretrain/images/00453/...
    meta = json.loads(hub.store.read_bytes("annotations/blip_laion_cc_sbu_558k.json"))
    assert {f"LLaVA-Pretrain/images/{s['image']}" for s in meta} == set(paths)
    state = json.loads(hub.store.read_bytes("state/llava_pretrain/files/images.zip.json"))
    commit = state["fetch"]["url"].split("/resolve/")[1].split("/")[0]
    assert len(commit) == 40 and commit.startswith(
        "70f9d1e"
    )  # the catalog's short hash, resolved and recorded
    assert state["fetch"]["etag"] == state["fetch"]["sha256"]


def test_allava_ten_chunks_are_one_fetch_each_and_flattened(hub):
    summary = ingest(hub, "allava_laion", "r1")
    assert (summary["status"], summary["files_fetched"]) == ("ok", 10)
    assert len(resolves(hub, "allava_laion/image_chunks/images_")) == 10
    paths = data_paths(hub.store, "allava_laion/")
    assert (
        len(paths)
        == summary["images_ok"]
        == sum(r.images for r in hub.replicas if r.source == "allava_laion")
    )
    assert all(
        p.startswith("allava_laion/images/") and p.count("/") == 2 and p.endswith(".jpeg") for p in paths
    )


def test_vision_flan_zip_lands_in_images_191task_1k(hub):
    summary = ingest(hub, "allava_vflan", "r1")
    assert summary["status"] == "ok" and summary["images_ok"] + summary["images_normalized"] == IMAGES
    assert summary["images_normalized"] == 1  # a GIF under a .jpg name, re-encoded
    paths = data_paths(hub.store, "allava_vflan/")
    assert len(paths) == IMAGES
    assert all(p.startswith("allava_vflan/images/images_191task_1k/") for p in paths)
    assert any(p.endswith(".png") for p in paths) and any(p.endswith(".jpg") for p in paths)


def test_annotations_list_train_json_and_never_touch_checkpoints_or_eval_files(hub):
    summary = ingest(hub, "mgllava_annotations", "r1")
    assert (summary["status"], summary["files_fetched"]) == ("ok", 4)
    keys = sorted(o.key for o in hub.store.list("annotations/"))
    assert keys == [
        "annotations/bbox_json/train/instruct_llava_allava_doc_dvqa_share_ai2d_1383k_only_box.json",
        "annotations/bbox_json/train/pretrain_blip_allava_1266k_only_box.json",
        "annotations/train_json/instruct_llava_allava_doc_dvqa_share_ai2d_1383k.json",
        "annotations/train_json/pretrain_blip_allava_1266k.json",
    ]
    fetched = [p for _, p in resolves(hub, "MG-LLaVA")]
    assert not any(p.endswith(".pth") or "/eval/" in p for p in fetched), fetched
    train = json.loads(hub.store.read_bytes(keys[2]))
    boxes = {b["id"] for b in json.loads(hub.store.read_bytes(keys[0]))}
    assert any("image" not in s for s in train)  # a text-only sample
    ids = [s["id"] for s in train if "image" in s]
    assert len(ids) > len(set(ids))  # a duplicate id (same image, another conversation)
    assert set(ids) == boxes
    listing = json.loads(hub.store.read_bytes("state/mgllava_annotations/listings/train_json.json"))
    assert listing["commit"].startswith("8e00993") and len(listing["files"]) == 2


# --- verification, refreshes, rate limits, tokens -----------------------------------------------------------------


def test_wrong_sha256_publishes_nothing_and_names_source_and_file(hub):
    key = hub.standin.repo_key("dataset", "Vision-Flan/vision-flan_191-task_1k")
    commit = hub.standin.repos[key]["refs"]["main"]
    blob = hub.standin.repos[key]["commits"][commit]["files"]["image_191-task_1k.zip"]
    corrupt = hub.tmp / "corrupt.zip"
    data = bytearray((hub.standin.root / blob["blob"]).read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    blob["blob"] = str(corrupt)  # served in place of the real blob; the Hub still advertises the real sha256
    run = Run(hub.settings, "r1")
    (planned,) = plan_source(run, "allava_vflan")
    with pytest.raises(FetchError) as e:
        fetch_file(run, "allava_vflan", planned["file"])
    assert "allava_vflan/image_191-task_1k.zip" in str(e.value) and "sha256 mismatch" in str(e.value)
    assert blob["sha256"] in str(e.value)
    assert hub.store.stat("raw/allava_vflan/image_191-task_1k.zip") is None
    assert not list(hub.store.list("raw/"))


def test_catalog_pin_disagreeing_with_the_hub_fails_before_downloading(hub):
    (m,) = load_catalog(hub.catalog).sources["allava_vflan"].files[0].mirrors
    with pytest.raises(ChecksumMismatch, match="the catalog pins 0000"):
        hf.fetch(m, hub.store, "raw/x.zip", label="allava_vflan/image_191-task_1k.zip", size=None,
                 checksums={"sha256": "0" * 64})  # fmt: skip
    assert not resolves(hub, "vision-flan")


def test_unchanged_refresh_fetches_nothing_and_a_moved_revision_fetches_again(hub):
    # a catalog that follows `main` (the shipped one pins Vision-FLAN to a commit)
    raw = yaml.safe_load(Path(hub.catalog).read_text())
    raw["sources"]["allava_vflan"]["files"][0]["mirrors"][0]["revision"] = "main"
    Path(hub.catalog).write_text(yaml.safe_dump(raw))
    first = ingest(hub, "allava_vflan", "r1")
    assert first["files_fetched"] == 1
    before = len(resolves(hub, "vision-flan"))
    again = ingest(hub, "allava_vflan", "r2")
    assert (again["files_fetched"], again["bytes_fetched"]) == (0, 0)
    assert len(resolves(hub, "vision-flan")) == before  # metadata only: HEAD + paths-info
    plan = json.loads(hub.store.read_bytes("runs/r2/sources/allava_vflan/summary.json"))["plan"]
    assert plan[0]["reason"].startswith("unchanged") and "/resolve/" in plan[0]["reason"]

    # `main` moves to a commit whose zip differs (one member more): fetched and extracted again.
    key = hub.standin.repo_key("dataset", "Vision-Flan/vision-flan_191-task_1k")
    old = hub.standin.repos[key]["refs"]["main"]
    blob = hub.standin.root / hub.standin.repos[key]["commits"][old]["files"]["image_191-task_1k.zip"]["blob"]
    moved = hub.tmp / "moved.zip"
    moved.write_bytes(blob.read_bytes())
    with zipfile.ZipFile(moved, "a") as z:
        z.writestr("images_191task_1k/README.txt", b"191 tasks, 1k each\n")
    new = hub.standin.commit(
        "dataset", "Vision-Flan/vision-flan_191-task_1k", {"image_191-task_1k.zip": moved}
    )
    assert new != old
    third = ingest(hub, "allava_vflan", "r3")
    assert third["files_fetched"] == 1
    plan = json.loads(hub.store.read_bytes("runs/r3/sources/allava_vflan/plan.json"))
    assert (
        plan["files"][0]["reason"]
        == f"upstream changed at {hub.server.base_url}/datasets/Vision-Flan/vision-flan_191-task_1k/resolve/{new}/image_191-task_1k.zip"
    )

    # A move whose file is byte-identical (another file changed) fetches nothing.
    hub.standin.commit("dataset", "Vision-Flan/vision-flan_191-task_1k", {"README.md": b"# Vision-Flan\n"})
    fourth = ingest(hub, "allava_vflan", "r4")
    assert fourth["files_fetched"] == 0


def relocated(h, name: str, change) -> Settings:
    """The same catalog with `change(raw)` applied, written beside the original: new settings pointing at it."""
    raw = yaml.safe_load(h.catalog.read_text())
    change(raw)
    path = h.tmp / name
    path.write_text(yaml.safe_dump(raw))
    return Settings(storage=h.settings.storage, catalog=str(path))


def plan_of(settings: Settings, source: str, run_id: str) -> list[dict]:
    run = Run(settings, run_id)
    plan_source(run, source)
    return run.record(source, "plan.json")["files"]


def test_a_pinned_file_whose_mirrors_change_is_not_fetched_again_but_a_new_pin_is(hub):
    """Adding, reordering or moving mirrors changes nothing about bytes the catalog pins by checksum."""
    assert ingest(hub, "coco", "r1")["files_fetched"] == 1
    (coco_file,) = yaml.safe_load(hub.catalog.read_text())["sources"]["coco"]["files"]
    (url,) = coco_file["mirrors"]
    moved = url.replace("127.0.0.1", "localhost")
    assert moved != url

    def move(raw):
        raw["sources"]["coco"]["files"][0]["mirrors"] = [f"{hub.server.base_url}/gone/train2017.zip", moved]

    seen = len(hub.server.requests)
    (decision,) = plan_of(relocated(hub, "moved.yaml", move), "coco", "r2")
    assert (decision["fetch"], decision["reason"]) == (False, "unchanged (pinned checksum verified)")
    assert hub.server.requests[seen:] == []  # not even a HEAD

    def repin(raw):
        move(raw)
        raw["sources"]["coco"]["files"][0]["checksums"] = {"sha256": "0" * 64}

    (decision,) = plan_of(relocated(hub, "repinned.yaml", repin), "coco", "r3")
    assert (decision["fetch"], decision["reason"]) == (True, "catalog entry changed")


def test_a_hub_served_from_another_endpoint_is_not_fetched_again(hub):
    """A Hub mirror's endpoint (a proxy, a stand-in on a new port) is where the Hub answers, not what is fetched."""
    assert ingest(hub, "allava_vflan", "r1")["files_fetched"] == 1

    def elsewhere(raw):
        for f in raw["sources"]["allava_vflan"]["files"]:
            for m in f["mirrors"]:
                m["endpoint"] = m["endpoint"].replace("127.0.0.1", "localhost")

    (decision,) = plan_of(relocated(hub, "elsewhere.yaml", elsewhere), "allava_vflan", "r2")
    assert decision["fetch"] is False and decision["reason"].startswith("unchanged (ETag")
    assert "localhost" in decision["reason"]  # asked at the new endpoint, which said the same commit's bytes


def test_429_waits_as_the_ratelimit_header_says_then_succeeds(hub, caplog):
    caplog.set_level(logging.INFO)
    (m,) = load_catalog(hub.catalog).sources["llava_pretrain"].files[1].mirrors
    hub.standin.add_fault("paths-info", Fault(status=429, retry_after=1))  # the API call: our own wait
    hub.standin.add_fault("resolve/70f9d1e", Fault(status=429, retry_after=1, method="GET"))  # the download
    started = time.monotonic()
    result = hf.fetch(
        m, hub.store, "raw/llava_pretrain/x.json", label="llava_pretrain/x.json", size=None, checksums={}
    )
    assert time.monotonic() - started >= 2.0
    assert result.size == hub.store.stat("raw/llava_pretrain/x.json").size
    assert "HTTP 429" in caplog.text and "retrying in 1 s" in caplog.text


def test_dropped_connection_resumes_with_range(hub):
    (m,) = load_catalog(hub.catalog).sources["llava_pretrain"].files[0].mirrors
    hub.standin.add_fault("resolve/70f9d1e", Fault(drop_after=300_000, method="GET"))
    result = hf.fetch(m, hub.store, "raw/llava_pretrain/images.zip", label="llava_pretrain/images.zip", size=None,
                      checksums={})  # fmt: skip
    assert result.resumes == 1
    ranges = [r for _, p, r in hub.server.requests if "resolve/70f9d1e" in p and r]
    assert ranges == ["bytes=300000-"]


def test_token_from_hf_token_is_sent_and_never_logged(hub, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    hub.standin.token = TOKEN
    (m,) = load_catalog(hub.catalog).sources["llava_pretrain"].files[1].mirrors
    with pytest.raises(FetchError) as denied:
        hf.fetch(m, hub.store, "raw/a.json", label="llava_pretrain/a.json", size=None, checksums={})
    assert "gated repo" in str(denied.value) and "HF_TOKEN" in str(denied.value)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hf.fetch(m, hub.store, "raw/a.json", label="llava_pretrain/a.json", size=None, checksums={})
    assert hub.standin.authorizations[-1] == f"Bearer {TOKEN}"
    hub.standin.add_fault("resolve/70f9d1e", Fault(status=404, method="GET"))
    with pytest.raises(FetchError) as missing:
        hf.fetch(m, hub.store, "raw/b.json", label="llava_pretrain/b.json", size=None, checksums={})
    for text in (caplog.text, str(denied.value), str(missing.value)):
        assert TOKEN not in text


def test_token_from_an_airflow_connection(hub, monkeypatch):
    hub.standin.token = TOKEN
    monkeypatch.setenv("MGDATA_HF_CONN_ID", "hf_hub")
    monkeypatch.setenv("AIRFLOW_CONN_HF_HUB", json.dumps({"conn_type": "generic", "password": TOKEN}))
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    summary = ingest(hub, "llava_pretrain", "r1")
    assert summary["status"] == "ok"
    assert set(hub.standin.authorizations) == {f"Bearer {TOKEN}"}


def test_hf_endpoint_is_read_at_call_time(hub, monkeypatch):
    raw = yaml.safe_load(hub.catalog.read_text())
    for f in raw["sources"]["llava_pretrain"]["files"]:
        for m in f["mirrors"]:
            m.pop("endpoint")
    (m,) = parse_catalog(raw).sources["llava_pretrain"].files[1].mirrors
    monkeypatch.setenv("HF_ENDPOINT", hub.server.base_url)
    assert hf.resolve(m).url.startswith(
        hub.server.base_url + "/datasets/liuhaotian/LLaVA-Pretrain/resolve/70f9d1e"
    )
    monkeypatch.setenv("HF_ENDPOINT", hub.server.base_url + "/nowhere")
    with pytest.raises(FetchError, match="liuhaotian/LLaVA-Pretrain"):
        hf.resolve(m)


def test_missing_file_and_revision_name_the_mirror(hub):
    raw = yaml.safe_load(hub.catalog.read_text())
    raw["sources"]["llava_pretrain"]["files"][1]["mirrors"][0]["revision"] = "deadbee"
    raw["sources"]["llava_pretrain"]["files"][0]["mirrors"][0]["path"] = "nope.zip"
    path = Path(hub.tmp / "c2.yaml")
    path.write_text(yaml.safe_dump(raw))
    files = load_catalog(path).sources["llava_pretrain"].files
    with pytest.raises(FetchError, match="revision not found"):
        hf.resolve(files[1].mirrors[0])
    with pytest.raises(FetchError, match="nope.zip"):
        hf.resolve(files[0].mirrors[0])
