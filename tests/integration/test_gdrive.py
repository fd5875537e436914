"""The gdrive adapter at the HTTP layer, against the Drive stand-in (recorded page shapes) on loopback.

Small file (303 to usercontent, then the attachment), large file (the virus-scan confirmation form), the quota page
(a clear error, then `fetch_mirrors` falls back to the next mirror), and a file found by name in a folder listing.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mgdata.catalog import Mirror
from mgdata.fetch import fetch_mirrors, probe_mirror
from mgdata.fetch.gdrive import DriveQuotaExceeded
from mgdata.fetch.gdrive import fetch as gdrive_fetch
from mgdata.fetch.http import FetchError
from mgdata.storage import LocalStore
from offline_mirror.drive import DriveStandIn
from offline_mirror.server import MirrorServer

SMALL_ID = "1f4v_3e1OJtyYqam1CEp6RenCNTU5_mG2"
LARGE_ID = "1iKH2lTi1-QxtNUVRxTUWFvUvRHq6HAsZ"
QUOTA_ID = "1FxB2Nw-vWUcTUSI_dBpPIykb-uGYoEqV"
FOLDER_ID = "1_GYPY5UkUy7HIcR0zq3ZCFgeZN7BAfm_"
JSON_ID = "1sVZfhvOhCZJvHUUbeyDfj3vpLCWH37ZC"


@pytest.fixture
def drive(tmp_path: Path, monkeypatch):
    root = tmp_path / "mirror"
    (root / "files").mkdir(parents=True)
    blobs = {}
    for name, size in [("share_textvqa.zip", 300_000), ("images.tar.gz", 2_500_000), ("wikiart.zip", 50_000)]:
        blobs[name] = os.urandom(size)
        (root / "files" / name).write_bytes(blobs[name])
    (root / "files" / "dataset.json").write_bytes(b'{"1": {"imageURL": "http://x/1.jpg"}}')
    (root / "plain" / "wikiart.zip").parent.mkdir()
    (root / "plain" / "wikiart.zip").write_bytes(blobs["wikiart.zip"])
    standin = DriveStandIn(large_file_bytes=1_000_000)
    standin.add_file(SMALL_ID, root / "files" / "share_textvqa.zip")
    standin.add_file(LARGE_ID, root / "files" / "images.tar.gz")
    standin.add_file(QUOTA_ID, root / "files" / "wikiart.zip")
    standin.add_file(JSON_ID, root / "files" / "dataset.json")
    standin.add_folder(
        FOLDER_ID,
        "OCR-VQA",
        [("1aBcDeFgHiJkLmNoPqRsTuVwXyZ012345", "loadDataset.py"), (JSON_ID, "dataset.json")],
    )
    standin.quota[QUOTA_ID] = None
    with MirrorServer(root, routes=standin.routes()) as server:
        monkeypatch.setenv("MGDATA_GDRIVE_URL", f"{server.base_url}/drive.google.com")
        yield server, standin, blobs, LocalStore(tmp_path / "store")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_small_file_follows_the_redirect_and_streams_into_the_store(drive):
    server, standin, blobs, store = drive
    data = blobs["share_textvqa.zip"]
    result = gdrive_fetch(
        Mirror(kind="gdrive", id=SMALL_ID), store, "raw/s/share_textvqa.zip",
        label="share_textvqa/share_textvqa.zip", size=len(data), checksums={"sha256": sha(data)},
    )  # fmt: skip
    assert store.read_bytes("raw/s/share_textvqa.zip") == data
    assert result.sha256 == sha(data) and "drive.usercontent.google.com/download" in result.url
    assert standin.confirmations == 0
    paths = [p for _, p, _ in server.requests]
    assert paths[0] == "/drive.google.com/uc" and "/drive.usercontent.google.com/download" in paths


def test_large_file_goes_through_the_virus_scan_confirmation(drive):
    server, standin, blobs, store = drive
    data = blobs["images.tar.gz"]
    result = gdrive_fetch(
        Mirror(kind="gdrive", id=LARGE_ID), store, "raw/dvqa/images.tar.gz",
        label="dvqa/images.tar.gz", size=None, checksums={},
    )  # fmt: skip
    assert store.read_bytes("raw/dvqa/images.tar.gz") == data and result.size == len(data)
    assert standin.confirmations == 1
    assert probe_mirror(Mirror(kind="gdrive", id=LARGE_ID)).size == len(data)


def test_quota_page_fails_the_attempt_with_what_to_do_then_the_next_mirror_delivers(drive):
    server, standin, blobs, store = drive
    data = blobs["wikiart.zip"]
    with pytest.raises(DriveQuotaExceeded) as info:
        gdrive_fetch(
            Mirror(kind="gdrive", id=QUOTA_ID), store, "raw/wikiart/wikiart.zip",
            label="wikiart/wikiart.zip", size=len(data), checksums={"sha256": sha(data)},
        )  # fmt: skip
    message = str(info.value)
    assert "Too many users have viewed or downloaded this file recently" in message
    assert "MGDATA_GDRIVE_COOKIES" in message and "24 h" in message and "next mirror" in message
    assert store.stat("raw/wikiart/wikiart.zip") is None

    mirrors = [Mirror(kind="gdrive", id=QUOTA_ID), Mirror(kind="http", url=server.url("plain/wikiart.zip"))]
    result, used = fetch_mirrors(
        mirrors, store, "raw/wikiart/wikiart.zip", label="wikiart/wikiart.zip", size=len(data),
        checksums={"sha256": sha(data)},
    )  # fmt: skip
    assert used.kind == "http" and result.sha256 == sha(data)
    assert store.read_bytes("raw/wikiart/wikiart.zip") == data


def test_quota_lifted_after_it_expires(drive):
    server, standin, blobs, store = drive
    standin.quota[QUOTA_ID] = 1  # one refusal, then the file: the next attempt (a cleared task) succeeds
    mirror = Mirror(kind="gdrive", id=QUOTA_ID)
    with pytest.raises(DriveQuotaExceeded):
        gdrive_fetch(mirror, store, "raw/w/wikiart.zip", label="w", size=None, checksums={})
    gdrive_fetch(mirror, store, "raw/w/wikiart.zip", label="w", size=None, checksums={})
    assert store.read_bytes("raw/w/wikiart.zip") == blobs["wikiart.zip"]


def test_file_found_by_name_in_a_folder_listing(drive):
    server, standin, blobs, store = drive
    mirror = Mirror(kind="gdrive", id=FOLDER_ID, path="dataset.json")
    assert mirror.describe() == f"gdrive://{FOLDER_ID}/dataset.json"
    gdrive_fetch(
        mirror, store, "raw/ocr_vqa/dataset.json", label="ocr_vqa/dataset.json", size=None, checksums={}
    )
    assert store.read_bytes("raw/ocr_vqa/dataset.json").startswith(b'{"1"')
    with pytest.raises(FetchError, match=r"has no file 'missing.json'.*dataset\.json"):
        gdrive_fetch(
            Mirror(kind="gdrive", id=FOLDER_ID, path="missing.json"), store, "raw/x", label="x", size=None,
            checksums={},
        )  # fmt: skip


def test_unknown_id_and_checksum_mismatch_name_the_drive_file(drive):
    server, standin, blobs, store = drive
    with pytest.raises(FetchError, match="no such file on Google Drive"):
        gdrive_fetch(Mirror(kind="gdrive", id="1" * 33), store, "raw/x", label="x", size=None, checksums={})
    with pytest.raises(FetchError, match=f"gdrive://{SMALL_ID}: sha256 mismatch"):
        gdrive_fetch(
            Mirror(kind="gdrive", id=SMALL_ID),
            store,
            "raw/x",
            label="x",
            size=None,
            checksums={"sha256": "0" * 64},
        )
    assert store.stat("raw/x") is None


def test_cookies_file_is_sent_and_never_shown(drive, tmp_path, monkeypatch):
    server, standin, blobs, store = drive
    cookies = tmp_path / "cookies.txt"
    cookies.write_text(
        "# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t0\tSID\tsecret-session-cookie\n"
    )
    monkeypatch.setenv("MGDATA_GDRIVE_COOKIES", str(cookies))
    with pytest.raises(DriveQuotaExceeded) as info:
        gdrive_fetch(Mirror(kind="gdrive", id=QUOTA_ID), store, "raw/y", label="y", size=None, checksums={})
    assert "secret-session-cookie" not in str(info.value)
    assert any("SID=secret-session-cookie" in (c or "") for c in standin.cookies)
