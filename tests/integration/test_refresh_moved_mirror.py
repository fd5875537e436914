"""A refresh after the mirrors moved (a new host, a new port, a mirror added in front): a file the catalog does not pin
by checksum is fetched again only when the upstream's own metadata at the new place (ETag, else Last-Modified and
size) says its bytes changed; a URL list whose URLs moved host does not fetch its images again. Two real servers on
loopback serve the same replica, as a moved mirror would.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
import yaml

from mgdata import manifest
from mgdata.ingest import Run, ingest_source, plan_source
from mgdata.settings import Settings
from mgdata.storage import LocalStore
from offline_mirror.build import build_mirror, write_catalog
from offline_mirror.server import MirrorServer
from offline_mirror.web_replicas import COVERS, routes

SOURCE = "ai2d"


@pytest.fixture
def mirrors(tmp_path):
    root = tmp_path / "mirror"
    (replica,) = build_mirror(root, images_per_source=8, sources=[SOURCE])
    old, new = MirrorServer(root).start(), MirrorServer(root).start()
    yield SimpleNamespace(tmp=tmp_path, root=root, replica=replica, old=old, new=new)
    old.stop()
    new.stop()


def settings(m, name: str, mirrors: list[str], **entry) -> Settings:
    """A catalog whose AI2D file comes from `mirrors`, with no size or checksum pinned (as GQA and VG part 1 ship)
    unless `entry` sets them."""
    path = write_catalog(m.root, m.old.base_url, [m.replica], out=m.tmp / name)
    raw = yaml.safe_load(path.read_text())
    (f,) = raw["sources"][SOURCE]["files"]
    f.pop("checksums", None)
    f.pop("size", None)
    f.update(mirrors=mirrors, **entry)
    path.write_text(yaml.safe_dump(raw))
    return Settings(storage=(m.tmp / "store").as_uri(), catalog=str(path))


def plan(s: Settings, run_id: str) -> dict:
    run = Run(s, run_id)
    plan_source(run, SOURCE)
    (decision,) = run.record(SOURCE, "plan.json")["files"]
    return decision


def test_an_unpinned_file_at_a_new_url_is_not_fetched_again_unless_its_metadata_moved(mirrors):
    m = mirrors
    first = ingest_source(Run(settings(m, "old.yaml", [m.old.url(m.replica.relpath)]), "r1"), SOURCE)
    assert first["files_fetched"] == 1

    # The mirror moved to another port, behind a dead first mirror: asked there (HEAD only), same ETag: kept.
    moved = settings(m, "moved.yaml", [m.new.url(f"dead/{m.replica.relpath}"), m.new.url(m.replica.relpath)])
    decision = plan(moved, "r2")
    assert decision["fetch"] is False, decision
    assert decision["reason"].startswith("mirrors changed; unchanged (ETag/Last-Modified/size)")
    assert {method for method, _, _ in m.new.requests} == {"HEAD"}, "nothing fetched from the new mirror"
    assert ingest_source(Run(moved, "r2b"), SOURCE)["files_fetched"] == 0

    # The bytes behind the new URL change (a new upload: its ETag moves): fetched again.
    served = Path(m.root) / m.replica.relpath
    st = served.stat()
    os.utime(served, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    decision = plan(moved, "r3")
    assert (decision["fetch"], decision["reason"]) == (True, "mirrors changed; upstream changed")


def test_a_new_size_or_pin_is_a_changed_entry(mirrors):
    m = mirrors
    assert ingest_source(Run(settings(m, "old.yaml", [m.old.url(m.replica.relpath)]), "r1"), SOURCE)[
        "files_fetched"
    ]
    resized = settings(m, "resized.yaml", [m.new.url(m.replica.relpath)], size=m.replica.size + 1)
    decision = plan(resized, "r2")
    assert (decision["fetch"], decision["reason"]) == (True, "catalog entry changed")
    repinned = settings(m, "repinned.yaml", [m.new.url(m.replica.relpath)], checksums={"sha256": "0" * 64})
    decision = plan(repinned, "r3")
    assert (decision["fetch"], decision["reason"]) == (True, "catalog entry changed")
    # The pin of the bytes held: mirrors moved, nothing asked.
    pinned = settings(
        m, "pinned.yaml", [m.new.url(m.replica.relpath)], checksums={"sha256": m.replica.sha256}
    )
    seen = len(m.new.requests)
    assert plan(pinned, "r4")["reason"] == "unchanged (pinned checksum verified)"
    assert m.new.requests[seen:] == []


def test_url_list_images_are_not_fetched_again_when_the_mirror_moved(tmp_path, monkeypatch):
    """The sample mirror's dataset.json names the mirror's address in every cover URL: on another port it is a new
    file (fetched again, it is small), but a cover whose last row is usable and whose URL only moved host is kept."""
    root = tmp_path / "mirror"
    replicas = build_mirror(root, images_per_source=24, sources=["ocr_vqa"])
    store = LocalStore(tmp_path / "store")

    def ingest(server: MirrorServer, run_id: str) -> dict:
        monkeypatch.setenv("MGDATA_GDRIVE_URL", f"{server.base_url}/drive.google.com")
        catalog = write_catalog(root, server.base_url, replicas, out=tmp_path / f"{run_id}.yaml")
        return ingest_source(Run(Settings(storage=store.url, catalog=str(catalog)), run_id), "ocr_vqa")

    with MirrorServer(root, routes=routes(root)) as old:
        assert ingest(old, "r1")["files_fetched"] == 1
    before = manifest.read_table(store, manifest.source_key("ocr_vqa")).to_pylist()
    images = {o.key: store.read_bytes(o.key) for o in store.list("data/")}
    with MirrorServer(root, routes=routes(root)) as new:
        second = ingest(new, "r2")
        asked = {path for method, path, _ in new.requests if method == "GET" and f"/{COVERS}/" in path}

    assert second["files_fetched"] == 1  # dataset.json: its URLs name the new port
    not_usable = {urlsplit(r["origin"]).path for r in before if r["status"] not in manifest.USABLE}
    assert not_usable and asked == not_usable, "only the dead and broken covers are asked again"
    after = manifest.read_table(store, manifest.source_key("ocr_vqa")).to_pylist()
    assert [(r["path"], r["status"], r["sha256"]) for r in after] == [
        (r["path"], r["status"], r["sha256"]) for r in before
    ]
    assert {o.key: store.read_bytes(o.key) for o in store.list("data/")} == images
    assert (second["added"], second["removed"], second["changed"]) == (0, 0, 0)
