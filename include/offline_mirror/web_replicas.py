"""Replicas of the Google Drive, URL-list and registration-only sources, and the stand-ins that serve them.

* The four ShareGPT4V web zips (`data/<name>/images/*`, P9), WikiArt with file names that carry escaped Unicode
  (`#U00e3`, P17) exactly as the annotation JSONs spell them; each on the Drive stand-in under its real Drive id, plus
  a copy at its Hugging Face `resolve/` path as the next mirror. WikiArt's Drive id answers with the quota page, so
  every run exercises "quota exceeded, then the next mirror".
* DVQA's `images.tar.gz`: one top folder of flat `bar_{train,val_easy,val_hard}_XXXXXXXX.png` (strip_components 1),
  large enough that Drive asks for the virus-scan confirmation.
* OCR-VQA: `dataset.json` (id -> {imageURL, questions, answers, title, authorName, genre, split}) in the Drive folder,
  and a stand-in "Amazon" image host serving the covers: JPEGs, a GIF and a PNG (re-encoded to JPEG on the way in),
  a GIF behind a `.jpg` URL, dead URLs (404, 410), a redirect, an HTML page instead of an image, a slow answer and a
  503 that works on retry. dataset.json holds absolute URLs, so it is written with the server's base URL
  (`write_url_list`, called by `write_catalog`).
* DocVQA's `train.tar.gz` (`train/documents/*.png` + `train/train_v1.0.json`): not served; tests and users drop it in
  the store's inbox or serve it behind an authenticated URL.

Deterministic under the seed, like every replica, and small: the pictures come from media.py's pools.
"""

from __future__ import annotations

import calendar
import gzip
import io
import json
import random
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from offline_mirror.drive import DriveStandIn
from offline_mirror.media import (
    HTML_PAGE,
    Member,
    PhotoPool,
    ReplicaFile,
    ReplicaSpec,
    encode,
    sha256_file,
    to_gif,
    truncated,
    write_text_atomic,
    write_zip,
)

# The Drive and URL-list replicas, served by the Drive and image-host stand-ins (build.py makes the plain-HTTP ones).
WEB_SOURCES: tuple[str, ...] = ("share_textvqa", "web_celebrity", "web_landmark", "wikiart", "sam_sft", "dvqa", "ocr_vqa")  # fmt: skip

WEB_JSON = (
    "web_replicas.json"  # drive ids -> files, folders, quota ids, cover behaviours: what routes() serves
)
AMAZON = "ecx.images-amazon.com"
COVERS = f"{AMAZON}/images/I"
HF_RESOLVE = "huggingface.co/datasets/{repo}/resolve/main/{path}"
OCR_VQA_FOLDER_FILE_ID = "1sVZfhvOhCZJvHUUbeyDfj3vpLCWH37ZC"  # made up: Drive publishes only the folder's id
QUOTA_SOURCE = "wikiart"

SHAREGPT4V = {
    "share_textvqa": ("share_textvqa.zip", "share_textvqa", (2023, 11, 2, 9, 12, 0)),
    "web_celebrity": ("web-celebrity.zip", "web-celebrity", (2023, 11, 2, 9, 13, 0)),
    "web_landmark": ("web-landmark.zip", "web-landmark", (2023, 11, 2, 9, 14, 0)),
    "wikiart": ("wikiart.zip", "wikiart", (2023, 11, 2, 9, 15, 0)),
    "sam_sft": ("sam_images_share-sft.zip", "sam", (2023, 11, 20, 7, 0, 0)),  # inner folders [I]: flattened
}
# dataset.json's URLs need the server's address: built with this one, rewritten by `point_catalog`.
PLACEHOLDER_BASE = "http://mirror.invalid"
OCR_VQA_ZIP = "ocr_vqa_images_llava_v15.zip"

# WikiArt names as the annotation JSONs spell them: UTF-8 bytes escaped as #Uxxxx (P17).
WIKIART_ESCAPED = (
    "arnold-b#U00e3#U00b6cklin_the-isle-of-the-dead-1880.jpg",
    "albrecht-d#U00e3#U00bcrer_young-hare-1502.jpg",
    "jean-l#U00e3#U00a9on-g#U00e3#U00a9r#U00e3#U00b4me_pollice-verso-1872.jpg",
)
_CELEBRITIES = ("Tom_Hanks", "Meryl_Streep", "Zhang_Ziyi", "Shah_Rukh_Khan", "Audrey_Hepburn", "Jackie_Chan")
_LANDMARKS = ("Eiffel_Tower", "Great_Wall", "Taj_Mahal", "Machu_Picchu", "Sydney_Opera_House", "Petra")
_ARTISTS = ("adriaen-brouwer", "claude-monet", "vincent-van-gogh", "katsushika-hokusai", "frida-kahlo")

# OCR-VQA covers with a behaviour on the stand-in host; every other cover is a plain JPEG.
COVER_BEHAVIOURS: dict[str, dict] = {
    "gif": {"ext": ".gif", "kind": "gif"},  # normalized: GIF re-encoded to JPEG
    "png": {"ext": ".png", "kind": "png"},  # normalized: RGBA PNG onto white, JPEG
    "gif-as-jpg": {"ext": ".jpg", "kind": "gif"},  # normalized: GIF bytes behind a .jpg URL (LLaVA #593)
    "dead-404": {"ext": ".jpg", "status": 404},  # missing
    "dead-410": {"ext": ".jpg", "status": 410},  # missing
    "moved": {"ext": ".jpg", "redirect": True},  # ok: 301 to the cover's new URL
    "html": {"ext": ".jpg", "kind": "html"},  # invalid: an HTML page with 200
    "truncated": {"ext": ".jpg", "kind": "truncated"},  # invalid: a cover cut off halfway
    "slow": {"ext": ".jpg", "delay": 0.3},  # ok: a slow answer within the timeout
    "flaky": {"ext": ".jpg", "fail_first": 503},  # ok: 503 with Retry-After, then the image
}
_OUTCOME = {"gif": "normalized", "png": "normalized", "gif-as-jpg": "normalized", "dead-404": "missing",
            "dead-410": "missing", "html": "invalid", "truncated": "invalid"}  # fmt: skip


def cover_outcome(behaviour: str | None) -> str:
    """The manifest status a cover with this behaviour must end with."""
    return _OUTCOME.get(behaviour or "", "ok")


def _rng(seed: int, name: str) -> random.Random:
    return random.Random(f"offline_mirror.web:{seed}:{name}")


def _shipped_mirrors(raw: dict, source: str, name: str) -> list:
    for f in raw["sources"][source]["files"]:
        if f["name"] == name:
            return f["mirrors"]
    raise ValueError(f"the shipped catalog's source {source!r} has no file {name!r}")


def _drive_id(raw: dict, source: str, name: str) -> str:
    return next(
        m["id"] for m in _shipped_mirrors(raw, source, name) if isinstance(m, dict) and m["kind"] == "gdrive"
    )


def _hf_relpath(raw: dict, source: str, name: str) -> str | None:
    for m in _shipped_mirrors(raw, source, name):
        if isinstance(m, dict) and m["kind"] == "huggingface":
            return HF_RESOLVE.format(repo=m["repo"], path=m["path"])
    return None


# --- the ShareGPT4V zips ------------------------------------------------------------------------------------------


def _web_names(source: str, rng: random.Random, n: int) -> list[str]:
    """`n` distinct file names in each set's style (the index keeps them distinct)."""
    if source == "wikiart":
        names = list(WIKIART_ESCAPED[: min(len(WIKIART_ESCAPED), n)])
        return names + [f"{rng.choice(_ARTISTS)}_painting-{i:04d}.jpg" for i in range(n - len(names))]
    if source == "web_celebrity":
        return [f"{rng.choice(_CELEBRITIES)}_{i}.jpg" for i in range(n)]
    if source == "web_landmark":
        return [f"{rng.choice(_LANDMARKS)}_{i:03d}{rng.randrange(10**5):05d}.jpg" for i in range(n)]
    if source == "sam_sft":
        return [f"sa_{i * 1000 + rng.randrange(1000)}.jpg" for i in range(n)]  # SA-1B's names, distinct
    return [f"{i:04x}{rng.getrandbits(48):012x}.jpg" for i in range(n)]  # share_textvqa: TextVQA-style ids


def _build_sharegpt4v(root: Path, raw: dict, source: str, images: int, seed: int) -> ReplicaFile:
    file_name, folder, stamp = SHAREGPT4V[source]
    rng = _rng(seed, source)
    pool = PhotoPool(rng, images)
    names = _web_names(source, rng, images)
    prefix = f"data/{folder}/images/"
    members = [Member("data/", None), Member(f"data/{folder}/", None), Member(prefix, None)]
    members += [Member(prefix + n, pool.jpeg()) for n in names]
    bad = prefix + f"zz-broken-{rng.randrange(10**6):06d}.jpg"
    members.append(Member(bad, truncated(pool.jpeg())))
    drive_id = _drive_id(raw, source, file_name)
    relpath = f"drive-files/{drive_id}/{file_name}"
    spec = ReplicaSpec(source, file_name, prefix, lambda r, n: [], stamp)
    write_zip(root / relpath, spec, members)
    _copy_to_hub_path(root, raw, source, file_name, relpath)
    return _record(root, source, file_name, relpath, images=len(names), broken=(bad,))


def _copy_to_hub_path(root: Path, raw: dict, source: str, name: str, relpath: str) -> None:
    """The next mirror: the same bytes at the Hub's resolve/ path, served as a plain file."""
    hf = _hf_relpath(raw, source, name)
    if hf:
        (root / hf).parent.mkdir(parents=True, exist_ok=True)
        (root / hf).write_bytes((root / relpath).read_bytes())


def _record(root: Path, source: str, name: str, relpath: str, *, images: int, broken=(), normalized=(),
            missing: int = 0) -> ReplicaFile:  # fmt: skip
    path = root / relpath
    return ReplicaFile(
        source=source, name=name, relpath=relpath, size=path.stat().st_size, sha256=sha256_file(path), images=images,
        broken=len(broken), normalized=len(normalized), broken_members=tuple(broken),
        normalized_members=tuple(normalized), missing=missing,
    )  # fmt: skip


# --- tar.gz replicas (DVQA, DocVQA) -------------------------------------------------------------------------------


def _chart(rng: random.Random) -> bytes:
    """A DVQA-like bar chart: white background, a few coloured bars, axes; PNG like the real ones."""
    from PIL import ImageDraw

    w, h = 448, 448
    image = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(image)
    bars = rng.randint(2, 7)
    for i in range(bars):
        x0 = 60 + i * (360 // bars)
        top = rng.randint(60, 380)
        color = tuple(rng.randint(0, 230) for _ in range(3))
        draw.rectangle((x0, top, x0 + 360 // bars - 10, 400), fill=color, outline="black")
        draw.text((x0 + 4, 410), rng.choice(["fire", "tax", "cap", "bush", "ward", "pause"]), fill="black")
    draw.line((50, 40, 50, 400, 430, 400), fill="black", width=2)
    return encode(image, "PNG", compress_level=1)


def _document(rng: random.Random) -> bytes:
    """A DocVQA-like scanned page: grey text lines on off-white, as a greyscale PNG."""
    from PIL import ImageDraw

    w, h = rng.randint(700, 850), rng.randint(900, 1100)
    image = Image.new("L", (w, h), rng.randint(235, 250))
    draw = ImageDraw.Draw(image)
    y = 60
    while y < h - 60:
        x = 50 + rng.randint(0, 30)
        while x < w - 80:
            word = rng.randint(20, 90)
            draw.rectangle((x, y, x + word, y + 9), fill=rng.randint(20, 90))
            x += word + rng.randint(8, 16)
        y += rng.randint(18, 34)
    return encode(image, "PNG", compress_level=1)


def _write_tar_gz(path: Path, members: list[tuple[str, bytes | None]], stamp: tuple) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mtime = calendar.timegm((*stamp, 0, 0, 0))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.mtime, info.uname, info.gname = mtime, "root", "root"
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    with path.open("wb") as out, gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1, mtime=mtime) as gz:
        gz.write(buffer.getvalue())  # a fixed gzip header timestamp: determinism


def _build_dvqa(root: Path, raw: dict, images: int, seed: int) -> ReplicaFile:
    rng = _rng(seed, "dvqa")
    names = sorted(
        f"bar_{rng.choice(['train', 'train', 'val_easy', 'val_hard'])}_{i:08d}.png"
        for i in rng.sample(range(10**6), images)
    )
    members: list[tuple[str, bytes | None]] = [("images/", None)]
    members += [(f"images/{n}", _chart(rng)) for n in names]
    bad = f"images/bar_train_{rng.randrange(10**6, 10**7):08d}.png"
    members.append((bad, b""))
    drive_id = _drive_id(raw, "dvqa", "images.tar.gz")
    relpath = f"drive-files/{drive_id}/images.tar.gz"
    _write_tar_gz(root / relpath, members, (2018, 1, 8, 12, 0, 0))
    _copy_to_hub_path(root, raw, "dvqa", "images.tar.gz", relpath)
    return _record(root, "dvqa", "images.tar.gz", relpath, images=len(names), broken=(bad,))


def build_docvqa(root: Path, images: int, seed: int = 0) -> ReplicaFile:
    """DocVQA's legacy `train.tar.gz`: `train/documents/*.png` and `train/train_v1.0.json` (only the PNGs are taken)."""
    rng = _rng(seed, "docvqa")
    names = sorted(f"{rng.choice(['ffbf', 'fgbd', 'fhvp', 'jzhd', 'kfbw'])}{rng.randrange(10**4):04d}_{rng.randint(1, 9)}.png"
                   for _ in range(images))  # fmt: skip
    names = sorted(set(names))
    members: list[tuple[str, bytes | None]] = [("train/", None), ("train/documents/", None)]
    members += [(f"train/documents/{n}", _document(rng)) for n in names]
    qa = {"dataset_name": "docvqa", "dataset_split": "train", "dataset_version": "1.0",
          "data": [{"questionId": i, "image": f"documents/{n}", "question": "What is the date?"}
                   for i, n in enumerate(names)]}  # fmt: skip
    members.append(("train/train_v1.0.json", json.dumps(qa).encode()))
    relpath = "datasets.cvc.uab.es/rrc/DocVQA/train.tar.gz"
    _write_tar_gz(root / relpath, members, (2020, 7, 1, 10, 0, 0))
    return _record(root, "docvqa", "train.tar.gz", relpath, images=len(names))


# --- OCR-VQA: covers on a stand-in image host, dataset.json with their URLs -----------------------------------------


def _build_covers(root: Path, images: int, seed: int) -> dict:
    """The covers under `<root>/ecx.images-amazon.com/images/I/`, and the mirror zip of the ones that are there (the
    `mirror` path: `ocr_vqa/images/<id>.jpg`, the URL's bytes as they are, like the circulating zips); returns
    {id: {"file", "behaviour"}}."""
    rng = _rng(seed, "ocr_vqa")
    pool = PhotoPool(rng, images)
    in_zip: list = []
    ids = [str(i) for i in rng.sample(range(10**8, 2 * 10**9), images + len(COVER_BEHAVIOURS))]
    # every behaviour once, at seeded places among the plain JPEG covers
    at = dict(zip(rng.sample(range(len(ids)), len(COVER_BEHAVIOURS)), COVER_BEHAVIOURS, strict=True))
    covers: dict[str, dict] = {}
    (root / COVERS).mkdir(parents=True, exist_ok=True)
    for n, image_id in enumerate(ids):
        behaviour = at.get(n)
        spec = COVER_BEHAVIOURS.get(behaviour, {"ext": ".jpg"})
        file = f"{rng.getrandbits(40):010x}L{spec['ext']}"  # Amazon-like: 51AbC...L.jpg
        kind = spec.get("kind")
        cover = pool.image().resize((320, 500))
        if kind == "gif":
            data = to_gif(cover)
        elif kind == "png":
            rgba = cover.convert("RGBA")
            rgba.putalpha(Image.new("L", rgba.size, 200))
            data = encode(rgba, "PNG", compress_level=1)
        elif kind == "html":
            data = HTML_PAGE
        elif kind == "truncated":
            data = truncated(encode(cover, "JPEG", quality=85))
        else:
            data = encode(cover, "JPEG", quality=85)
        if "status" not in spec:
            target = f"moved-{file}" if spec.get("redirect") else file
            (root / COVERS / target).write_bytes(data)
        covers[image_id] = {"file": file, "behaviour": behaviour}
        if cover_outcome(behaviour) != "missing":
            in_zip.append(Member(f"ocr_vqa/images/{image_id}.jpg", data))
    members = [
        Member("ocr_vqa/", None),
        Member("ocr_vqa/images/", None),
        *sorted(in_zip, key=lambda m: m.name),
    ]
    spec = ReplicaSpec("ocr_vqa", OCR_VQA_ZIP, "ocr_vqa/images/", lambda r, n: [], (2024, 4, 20, 8, 0, 0))
    write_zip(root / ocr_vqa_zip_relpath(), spec, members)
    return covers


def ocr_vqa_zip_relpath() -> str:
    return HF_RESOLVE.format(repo="weizhiwang/llava_v15_instruction_images", path=OCR_VQA_ZIP)


def write_url_list(root: Path, base_url: str) -> ReplicaFile:
    """dataset.json for the covers, with absolute URLs on `base_url` (known once the server listens)."""
    spec = json.loads((root / WEB_JSON).read_text())
    covers: dict[str, dict] = spec["covers"]
    rng = _rng(spec["seed"], "ocr_vqa.json")
    genres = ["Cookbooks, Food & Wine", "Travel", "Computers & Technology", "Children's Books", "Romance"]
    entries = {}
    for image_id, cover in covers.items():
        entries[image_id] = {
            "imageURL": f"{base_url.rstrip('/')}/{COVERS}/{cover['file']}",
            "questions": [
                "Who wrote this book?",
                "What is the title of this book?",
                "What is the genre of this book?",
            ],
            "answers": ["Jane Doe", f"Book {image_id}", rng.choice(genres)],
            "title": f"Book {image_id}",
            "authorName": "Jane Doe",
            "genre": rng.randrange(32),
            "split": rng.choice([1, 1, 1, 2, 3]),
        }
    relpath = spec["url_list"]
    write_text_atomic(root / relpath, json.dumps(entries, indent=1) + "\n")
    outcomes = [cover_outcome(c["behaviour"]) for c in covers.values()]
    return _record(
        root, "ocr_vqa", "dataset.json", relpath, images=sum(o in ("ok", "normalized") for o in outcomes),
        broken=[i for i, c in covers.items() if cover_outcome(c["behaviour"]) == "invalid"],
        normalized=[i for i, c in covers.items() if cover_outcome(c["behaviour"]) == "normalized"],
        missing=outcomes.count("missing"),
    )  # fmt: skip


# --- build and serve ----------------------------------------------------------------------------------------------


def build_web_replicas(root: Path, raw: dict, names: list[str], images: int, seed: int) -> list[ReplicaFile]:
    """Build the named web replicas under `root` and `root/web_replicas.json` (what `routes` serves)."""
    root = Path(root)
    small = max(3, images // 4)  # these sets are small in MG-LLaVA's mix (~500 images each, MGM #23)
    replicas: list[ReplicaFile] = []
    drive: dict[str, str] = {}
    spec: dict = {
        "seed": seed,
        "drive_files": drive,
        "folders": {},
        "quota": [],
        "covers": {},
        "large_file_bytes": None,
    }
    for name in names:
        if name in SHAREGPT4V:
            r = _build_sharegpt4v(root, raw, name, small, seed)
            drive[_drive_id(raw, name, r.name)] = r.relpath
            if name == QUOTA_SOURCE:
                spec["quota"].append(_drive_id(raw, name, r.name))
            replicas.append(r)
        elif name == "dvqa":
            r = _build_dvqa(root, raw, small, seed)
            drive[_drive_id(raw, name, r.name)] = r.relpath
            spec["large_file_bytes"] = (
                r.size
            )  # DVQA (5.6 GB upstream) goes through the virus-scan confirmation
            replicas.append(r)
        elif name == "ocr_vqa":
            spec["covers"] = _build_covers(root, small, seed)
            folder = _drive_id(raw, "ocr_vqa", "dataset.json")
            spec["url_list"] = f"drive-files/{OCR_VQA_FOLDER_FILE_ID}/dataset.json"
            drive[OCR_VQA_FOLDER_FILE_ID] = spec["url_list"]
            spec["folders"][folder] = ["OCR-VQA", [["1aN7Ff0mKg4XqLrVZp3sT0dWcB9uEyJhQ", "loadDataset.py"],
                                                   [OCR_VQA_FOLDER_FILE_ID, "dataset.json"]]]  # fmt: skip
        else:
            raise ValueError(f"no web replica for {name!r}; replicable: {list(WEB_SOURCES)}")
    write_text_atomic(root / WEB_JSON, json.dumps(spec, indent=1) + "\n")
    if "ocr_vqa" in names:
        replicas.append(write_url_list(root, PLACEHOLDER_BASE))
    return replicas


def point_catalog(raw: dict, base_url: str, root: Path, replicas: list[ReplicaFile]) -> None:
    """Pin every web replica in the mirror catalog: its Drive id first (the stand-in, via MGDATA_GDRIVE_URL), then
    the copy at its Hugging Face resolve/ path as a plain HTTP mirror; size, sha256 and expected counts from the
    replica. OCR-VQA's dataset.json is rewritten for `base_url` first, and its mirror zip pinned too."""
    base = base_url.rstrip("/")
    for r in replicas:
        if r.source == "ocr_vqa":
            r = write_url_list(root, base)
        body = raw["sources"][r.source]
        (entry,) = [f for f in body["files"] if f["name"] == r.name]
        hf = [f"{base}/{_hf_relpath(raw, r.source, r.name)}"] if _hf_relpath(raw, r.source, r.name) else []
        entry["mirrors"] = [m for m in entry["mirrors"] if isinstance(m, dict) and m["kind"] == "gdrive"] + hf
        entry["size"], entry["checksums"] = r.size, {"sha256": r.sha256}
        body["expected_images"] = r.images
        if r.source == "ocr_vqa":
            (zipped,) = [f for f in body["files"] if f["name"] == OCR_VQA_ZIP]
            path = root / ocr_vqa_zip_relpath()
            zipped["mirrors"] = [f"{base}/{ocr_vqa_zip_relpath()}"]
            zipped["size"], zipped["checksums"] = path.stat().st_size, {"sha256": sha256_file(path)}


@dataclass
class CoverHost:
    """The stand-in image host: a cover's behaviour (dead, redirect, slow, flaky) applied, else the file as is."""

    root: Path
    covers: dict[str, dict]  # id -> {"file", "behaviour"}
    _by_file: dict[str, str | None] = field(default_factory=dict)
    _failed: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._by_file = {c["file"]: c["behaviour"] for c in self.covers.values()}

    def __call__(self, handler, relpath: str, method: str) -> None:
        file = relpath[len(COVERS) + 1 :]
        spec = COVER_BEHAVIOURS.get(self._by_file.get(file) or "", {})
        if "status" in spec:
            handler._simple(spec["status"], method == "HEAD")
            return
        if spec.get("redirect"):
            handler.send_response(301)
            handler.send_header("Location", f"/{COVERS}/moved-{file}")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        if spec.get("delay"):
            time.sleep(spec["delay"])
        if spec.get("fail_first"):
            with self._lock:
                first = file not in self._failed
                self._failed.add(file)
            if first:
                handler._simple(spec["fail_first"], method == "HEAD", {"Retry-After": "0"})
                return
        path = self.root / COVERS / file
        if not path.is_file():
            handler._simple(404, method == "HEAD")
            return
        handler.send_path(path, head=method == "HEAD")


def routes(root: Path) -> list:
    """The Drive stand-in and the cover host for a mirror root built with the web replicas (none without them)."""
    root = Path(root).resolve()
    if not (root / WEB_JSON).is_file():
        return []
    spec = json.loads((root / WEB_JSON).read_text())
    drive = DriveStandIn(quota=dict.fromkeys(spec["quota"]))
    if spec["large_file_bytes"]:
        drive.large_file_bytes = spec["large_file_bytes"]
    for file_id, relpath in spec["drive_files"].items():
        drive.add_file(file_id, root / relpath)
    for folder_id, (name, children) in spec["folders"].items():
        drive.add_folder(folder_id, name, [tuple(c) for c in children])
    return [*drive.routes(), (f"{COVERS}/", CoverHost(root, spec["covers"]))]
