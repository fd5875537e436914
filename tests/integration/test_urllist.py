"""The URL-list fetcher (OCR-VQA) against a loopback image host: slow, dead (404/410), redirecting, flaky,
HTML-instead-of-image, truncated, GIF and PNG covers. Every URL leaves a manifest row with its outcome, every saved
file is a real JPEG named <id>.jpg, a refresh retries only the dead ones, and the mirror-zip path is the alternative.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from mgdata import manifest
from mgdata.fetch.urllist import FetchPolicy, ingest_urls, read_url_list, url_shards
from mgdata.ingest import Run, ingest_source
from mgdata.settings import Settings
from mgdata.storage import LocalStore
from offline_mirror.build import build_mirror, write_catalog
from offline_mirror.server import Fault, MirrorServer
from offline_mirror.web_replicas import COVERS, WEB_JSON, cover_outcome, routes

FAST = FetchPolicy(workers=8, per_host=4, attempts=3, backoff=0.05, max_backoff=0.5, timeout=5)


@pytest.fixture
def host(tmp_path: Path, monkeypatch):
    root = tmp_path / "mirror"
    replicas = build_mirror(root, images_per_source=24, sources=["ocr_vqa"])
    with MirrorServer(root, routes=routes(root)) as server:
        catalog = write_catalog(root, server.base_url, replicas)
        monkeypatch.setenv("MGDATA_GDRIVE_URL", f"{server.base_url}/drive.google.com")
        covers = json.loads((root / WEB_JSON).read_text())["covers"]
        yield server, root, catalog, covers


def _dataset(root: Path) -> list[tuple[str, str]]:
    path = next(root.glob("drive-files/*/dataset.json"))
    return read_url_list(path.read_bytes(), label="dataset.json")


def _real_jpeg(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        assert im.format == "JPEG" and im.mode in ("RGB", "L"), (im.format, im.mode)
        return im


def test_every_outcome_lands_in_the_manifest_and_every_saved_file_is_a_real_jpeg(host, tmp_path):
    server, root, _, covers = host
    items = _dataset(root)
    store = LocalStore(tmp_path / "store")
    rows = ingest_urls(store, "ocr_vqa", "ocr_vqa/images", items, run_id="r1", policy=FAST)

    assert len(rows) == len(items) == len(covers)
    by_id = {r["path"].rsplit("/", 1)[1][: -len(".jpg")]: r for r in rows}
    for image_id, url in items:
        row, behaviour = by_id[image_id], covers[image_id]["behaviour"]
        assert row["status"] == cover_outcome(behaviour), (behaviour, row)
        assert row["origin"] == url and row["path"] == f"ocr_vqa/images/{image_id}.jpg"
    reasons = {covers[i]["behaviour"]: by_id[i]["error"] for i in covers if covers[i]["behaviour"]}
    assert reasons["dead-404"].startswith("HTTP 404") and reasons["dead-410"].startswith("HTTP 410")
    assert reasons["html"] == "not an image (HTML page)"
    assert reasons["truncated"].startswith("truncated image")
    assert reasons["gif"] == reasons["gif-as-jpg"] == "GIF content under .jpg name, re-encoded to JPEG"
    assert reasons["png"] == "PNG content under .jpg name, re-encoded to JPEG"
    assert reasons["moved"] is None and reasons["flaky"] is None and reasons["slow"] is None

    saved = sorted(o.key for o in store.list("data/"))
    assert saved == sorted(f"data/{r['path']}" for r in rows if r["status"] in manifest.USABLE)
    for key in saved:
        _real_jpeg(store.read_bytes(key))
    quarantined = {o.key for o in store.list("quarantine/")}
    assert quarantined == {f"quarantine/ocr_vqa/{r['path']}" for r in rows if r["status"] == "invalid"}
    assert manifest.to_table(rows).num_rows == len(rows)  # the rows fit the manifest schema
    # the flaky cover was asked twice (503, then the image); dead ones once (404/410 are not retried)
    asked = [p for _, p, _ in server.requests]
    flaky = next(c["file"] for c in covers.values() if c["behaviour"] == "flaky")
    dead = next(c["file"] for c in covers.values() if c["behaviour"] == "dead-404")
    assert asked.count(f"/{COVERS}/{flaky}") == 2 and asked.count(f"/{COVERS}/{dead}") == 1


def test_a_stalled_url_times_out_after_its_retries(host, tmp_path):
    server, root, _, covers = host
    image_id, url = _dataset(root)[0]
    relpath = url.split("/", 3)[3]
    server.add_faults(relpath, Fault(delay=2), Fault(delay=2))
    policy = FetchPolicy(workers=2, per_host=2, attempts=2, backoff=0.05, timeout=0.3)
    (row,) = ingest_urls(LocalStore(tmp_path / "s"), "ocr_vqa", "ocr_vqa/images", [(image_id, url)], run_id="r",
                         policy=policy)  # fmt: skip
    assert (
        row["status"] == "missing" and "read timed out" in row["error"] and "after 2 attempts" in row["error"]
    )


def test_per_host_politeness_bounds_requests_in_flight(tmp_path):
    (tmp_path / "root").mkdir()
    image = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(image, "JPEG")
    lock, state = threading.Lock(), {"now": 0, "max": 0}

    def slow_host(handler, relpath, method):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
        body = image.getvalue()
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    with MirrorServer(tmp_path / "root", routes=[("covers/", slow_host)]) as server:
        items = [(str(i), f"{server.base_url}/covers/{i}.jpg") for i in range(40)]
        rows = ingest_urls(LocalStore(tmp_path / "s"), "x", "x/images", items, run_id="r",
                           policy=FetchPolicy(workers=16, per_host=3, backoff=0.05))  # fmt: skip
    assert all(r["status"] == "ok" for r in rows)
    assert state["max"] == 3


def test_url_shards_stay_in_the_hundreds():
    items = [(str(i), f"http://h/{i}.jpg") for i in range(207_572)]
    shards = url_shards(items, max_shards=256)
    assert len(shards) == 208 and sum(map(len, shards)) == len(items)
    assert len(url_shards(items, max_shards=100)) == 100
    with pytest.raises(ValueError, match="without an http"):
        read_url_list(b'{"1": {"imageURL": "ftp://x"}}', label="dataset.json")


def test_pipeline_then_a_refresh_retries_only_the_dead_urls_then_the_mirror_path(host, tmp_path):
    server, root, catalog, covers = host
    store_url = (tmp_path / "store").as_uri()
    settings = Settings(storage=store_url, catalog=str(catalog))
    first = ingest_source(Run(settings, "run1"), "ocr_vqa")
    usable = sum(cover_outcome(c["behaviour"]) in manifest.USABLE for c in covers.values())
    assert first["images_ok"] + first["images_normalized"] == usable
    store = LocalStore(tmp_path / "store")
    table = manifest.read_table(store, manifest.source_key("ocr_vqa"))
    assert manifest.counts(table)["missing"] == 2 and manifest.counts(table)["invalid"] == 2

    # A dead URL comes back; the refresh asks only the four dead or broken URLs again.
    revived = next(c["file"] for c in covers.values() if c["behaviour"] == "dead-404")
    plain = next(c["file"] for c in covers.values() if c["behaviour"] is None)
    (root / COVERS / revived).write_bytes((root / COVERS / plain).read_bytes())
    server.routes[-1][1]._by_file[revived] = None  # the image host serves it again
    before = len(server.requests)
    second = ingest_source(Run(settings, "run2"), "ocr_vqa")
    asked = [p for _, p, _ in server.requests[before:] if p.startswith(f"/{COVERS}/")]
    # four URLs asked again (one may be asked twice: a read that times out on a loaded machine is retried)
    assert len(set(asked)) == 4, asked
    assert second["files_fetched"] == 0
    assert second["images_ok"] + second["images_normalized"] == usable + 1
    plan = json.loads(store.read_bytes("runs/run2/sources/ocr_vqa/plan.json"))
    assert "retrying 4 dead or broken URLs" in plan["files"][0]["reason"]
    table = manifest.read_table(store, manifest.source_key("ocr_vqa"))
    assert table.num_rows == len(covers) and manifest.counts(table)["missing"] == 1

    # The mirror zip instead: the report's by_file says what each path produced.
    mirror = Settings(storage=store_url, catalog=str(catalog), ocr_vqa_images="mirror")
    third = ingest_source(Run(mirror, "run3"), "ocr_vqa")
    summary = json.loads(store.read_bytes("runs/run3/sources/ocr_vqa/summary.json"))
    by_file = summary["by_file"]
    assert (
        by_file["dataset.json"]["used"] is False and by_file["ocr_vqa_images_llava_v15.zip"]["used"] is True
    )
    assert by_file["dataset.json"]["ok"] + by_file["dataset.json"]["normalized"] == usable + 1
    zipped = by_file["ocr_vqa_images_llava_v15.zip"]
    assert zipped["ok"] + zipped["normalized"] == third["images_ok"] + third["images_normalized"] == usable
    for o in store.list("data/ocr_vqa/images/"):
        _real_jpeg(store.read_bytes(o.key))

    # Back and forth: each path's rows come back from its unchanged file, nothing is fetched again.
    back = ingest_source(Run(settings, "run4"), "ocr_vqa")
    assert back["files_fetched"] == 0 and back["images_ok"] + back["images_normalized"] == usable + 1
    again = ingest_source(Run(mirror, "run5"), "ocr_vqa")
    assert again["files_fetched"] == 0 and again["images_ok"] + again["images_normalized"] == usable
    plan = json.loads(store.read_bytes("runs/run5/sources/ocr_vqa/summary.json"))["plan"]
    assert "rows were dropped" in plan[1]["reason"]


def test_a_refresh_whose_dead_urls_all_stay_dead_writes_nothing_but_its_own_records(host, tmp_path):
    """Dead URLs are asked again on every refresh; when each comes out as its published row says (the same error,
    the same broken bytes), no manifest part shadows those rows, nothing is quarantined again, and the manifest,
    the state and the file state stay as they were: only the run's own plan, shard and summary records are new."""
    server, _, catalog, covers = host
    settings = Settings(storage=(tmp_path / "store").as_uri(), catalog=str(catalog))
    root = tmp_path / "store"
    first = ingest_source(Run(settings, "run1"), "ocr_vqa")

    def kept() -> dict[str, tuple[int, int]]:  # everything but the records of a later run
        return {
            str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in root.rglob("*")
            if p.is_file() and not {"run2"} & set(p.relative_to(root).parts)
        }

    before, asked_before = kept(), len(server.requests)
    again = ingest_source(Run(settings, "run2"), "ocr_vqa")
    asked = {p for _, p, _ in server.requests[asked_before:] if p.startswith(f"/{COVERS}/")}
    dead_or_broken = sum(cover_outcome(c["behaviour"]) not in manifest.USABLE for c in covers.values())
    assert len(asked) == dead_or_broken == 4  # the retry did happen
    assert kept() == before  # ...and wrote nothing outside its own records
    assert not [p for p in root.rglob("*") if "run2" in p.parts and "manifests" in p.parts]
    for key in ("images_ok", "images_invalid", "images_normalized"):
        assert again[key] == first[key]
    assert again["added"] == again["removed"] == again["changed"] == 0
    summary = json.loads((root / "runs/run2/sources/ocr_vqa/summary.json").read_text())
    assert summary["by_file"]["dataset.json"]["run_id"] == "run1"  # the rows standing are the first run's


def test_a_redirect_loop_stops_after_max_redirects(tmp_path):
    (tmp_path / "root").mkdir()
    hops = []

    def loop(handler, relpath, method):
        hops.append(relpath)
        handler.send_response(302)
        handler.send_header("Location", f"/loop/{len(hops)}.jpg")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    with MirrorServer(tmp_path / "root", routes=[("loop/", loop)]) as server:
        (row,) = ingest_urls(LocalStore(tmp_path / "s"), "x", "x/images", [("1", f"{server.base_url}/loop/0.jpg")],
                             run_id="r", policy=FetchPolicy(workers=1, attempts=1, max_redirects=3))  # fmt: skip
    assert (row["status"], row["error"]) == ("missing", "more than 3 redirects")
    assert len(hops) == 4  # the first request and 3 redirects followed


def test_the_proxy_from_the_environment_is_used_unless_bypassed(host, tmp_path, monkeypatch):
    _, root, _, covers = host
    image_id, url = next((i, u) for i, u in _dataset(root) if not covers[i]["behaviour"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # nothing listens there once the socket is closed
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{dead}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    policy = FetchPolicy(workers=1, attempts=1)

    (via_proxy,) = ingest_urls(LocalStore(tmp_path / "a"), "x", "x/images", [(image_id, url)], run_id="r",
                               policy=policy)  # fmt: skip
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    (bypassed,) = ingest_urls(LocalStore(tmp_path / "b"), "x", "x/images", [(image_id, url)], run_id="r",
                              policy=policy)  # fmt: skip

    assert via_proxy["status"] == "missing" and via_proxy["error"].startswith(
        "ProxyError: Connection refused"
    )
    assert bypassed["status"] == "ok"


def test_an_error_body_arriving_late_does_not_spoil_the_next_request_on_its_connection(tmp_path):
    """A 404's body can reach the client after its headers (they go out in separate writes). The connection must
    not serve the next URL with those bytes still unread: the next answer would start with the old body, fail to
    parse, and the next URL would be fetched twice."""
    (tmp_path / "root").mkdir()
    image = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(image, "JPEG")

    def host(handler, relpath, method):
        if relpath.endswith("dead.jpg"):
            body = b"404 Not Found\n" * 64
            handler.send_response(404)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.flush()
            time.sleep(0.2)  # the body comes late: the client already holds the status
            handler.wfile.write(body)
            return
        handler._send_body(200, image.getvalue(), "image/jpeg", None, method == "HEAD")

    with MirrorServer(tmp_path / "root", routes=[("covers/", host)]) as server:
        items = [
            ("dead", f"{server.base_url}/covers/dead.jpg"),
            ("alive", f"{server.base_url}/covers/alive.jpg"),
        ]
        rows = ingest_urls(LocalStore(tmp_path / "s"), "x", "x/images", items, run_id="r",
                           policy=FetchPolicy(workers=1, per_host=1, backoff=0.05))  # fmt: skip
    assert [r["status"] for r in rows] == ["missing", "ok"]
    assert [p for _, p, _ in server.requests] == ["/covers/dead.jpg", "/covers/alive.jpg"]
