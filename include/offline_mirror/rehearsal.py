"""The rehearsal mirror: every source at its real file count and archive shape, with tiny images.

`python -m offline_mirror build ROOT --scale full` (or `0.1`, `0.01`, any fraction) writes the whole corpus's shape,
about 2.07M files at full scale, in a few GB: COCO 118,287; GQA 148,854; TextVQA 25,119; VG 64,346 + 43,903; AI2D
4,903; LLaVA-Pretrain 558,128 (no root folder); ALLaVA-LAION 505,588 over 10 chunks; Vision-FLAN 181,393; the four
ShareGPT4V zips (`data/<name>/images/`, about 500 each); DVQA's 200,000 train charts in one tar.gz; DocVQA's 10,194
train documents in `train.tar.gz` (not served: the rehearsal drops it in the store's inbox); OCR-VQA's 207,572 covers
on the loopback cover host with dead, moved, slow, flaky, GIF, PNG and HTML ones; MG-LLaVA's two training JSONs with
1,266K and 1,383K samples citing the images (`training_json`, the sample mirror's generator) and their bbox JSONs.

Every count is multiplied by the scale. Images are a few hundred bytes to a few KB: a small pool of encoded pictures
per source, each member one of them with a comment segment (JPEG) or private chunk (PNG) that carries the member's
number and padding, so every member hashes differently and each source's bytes are its real compressed size divided
by `BYTES_DIVISOR`. The catalog written at serve time sets `shard_bytes` to 256 MiB scaled the same way, so each source
is cut into the real run's number of extract instances (docs/cluster.md); `instances` < 1 cuts fewer, bigger shards
(the test's 1% run). A sprinkling of members is broken (cut in half, empty, an HTML page) and a few are GIFs under a
`.jpg` name (normalized). The same seed and scale give byte-identical files.

The Hub, Drive and cover-host stand-ins serve it exactly as they serve the sample mirror (`replicas.json`, `hub.json`,
`web_replicas.json`); `rehearsal.json` records the scale, the shard size and DocVQA's archive.
"""

from __future__ import annotations

import calendar
import gzip
import io
import json
import math
import os
import random
import struct
import tarfile
import time
import zipfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import yaml

from mgdata.catalog import SHIPPED_CATALOG, parse_catalog
from mgdata.settings import usable_cores
from offline_mirror import hub, training_json, web_replicas
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

REHEARSAL_JSON = "rehearsal.json"
BYTES_DIVISOR = 64  # mirror bytes = real compressed bytes / 64: 250 GB -> ~3.9 GB at full scale
REAL_SHARD_BYTES = 256 * 1024 * 1024  # the shipped catalog's shard_bytes
BROKEN_SHARE = 0.0005  # one member in 2,000 is broken (at least 3 per archive: one of each kind)
GIF_EVERY = 50_000  # one GIF under a .jpg name per 50,000 JPEG members (at least one)
PRETRAIN_SAMPLES, INSTRUCT_SAMPLES = 1_266_000, 1_383_000
DOCVQA_RELPATH = "datasets.cvc.uab.es/rrc/DocVQA/train.tar.gz"


@dataclass(frozen=True)
class Archive:
    """One remote file of the real corpus: where it is served, how many images it holds, its real size."""

    source: str
    file: str  # the catalog's file name
    count: int  # image members at full scale (broken ones included)
    real_bytes: float  # the real compressed size (docs/cluster.md, shared/reference/sources.md)
    fmt: str  # "jpeg", "png", "chart" (small palette PNG), "document" (greyscale PNG), "vflan" (JPEG + PNG)
    serve: str  # "http", "hub", "drive", "covers", "inbox"
    chunk: int = 0  # ALLaVA's chunk number


_ARCHIVES: tuple[Archive, ...] = (
    Archive("coco", "train2017.zip", 118_287, 19.3e9, "jpeg", "http"),
    Archive("gqa", "images.zip", 148_854, 21.8e9, "jpeg", "http"),
    Archive("textvqa", "train_val_images.zip", 25_119, 7.5e9, "jpeg", "http"),
    Archive("vg_part1", "images.zip", 64_346, 9.7e9, "jpeg", "http"),
    Archive("vg_part2", "images2.zip", 43_903, 5.5e9, "jpeg", "http"),
    Archive("ai2d", "ai2d-all.zip", 4_903, 0.9e9, "png", "http"),
    Archive("llava_pretrain", "images.zip", 558_128, 27.4e9, "jpeg", "hub"),
    *(
        Archive("allava_laion", f"images_{k}.zip", 50_559 - (k >= 2), 92.3e9 / 10, "jpeg", "hub", chunk=k)
        for k in range(hub.ALLAVA_CHUNKS)
    ),  # 505,588 over ten chunks
    Archive("allava_vflan", "image_191-task_1k.zip", 181_393, 36.3e9, "vflan", "hub"),
    Archive("share_textvqa", "share_textvqa.zip", 500, 126_417_739, "jpeg", "drive"),
    Archive("web_celebrity", "web-celebrity.zip", 498, 103_216_303, "jpeg", "drive"),
    Archive("web_landmark", "web-landmark.zip", 500, 227_426_263, "jpeg", "drive"),
    Archive("wikiart", "wikiart.zip", 500, 185_443_242, "jpeg", "drive"),
    # DVQA's train charts: two thirds of the 300K in the 5.58 GB archive
    Archive("dvqa", "images.tar.gz", 200_000, 5.58e9 * 2 / 3, "chart", "drive"),
    Archive("ocr_vqa", "dataset.json", 207_572, 8.97e9, "jpeg", "covers"),
    Archive("docvqa", "train.tar.gz", 10_194, 7.0e9 * 10_194 / 12_767, "document", "inbox"),
)
ARCHIVES = _ARCHIVES


def parse_scale(value: str) -> float:
    """`full` or a fraction in (0, 1]."""
    scale = 1.0 if value == "full" else float(value)
    if not 0 < scale <= 1:
        raise ValueError(f"--scale must be 'full' or a fraction in (0, 1], got {value!r}")
    return scale


def scaled(count: int, scale: float) -> int:
    return max(8, round(count * scale))


def shard_bytes(scale: float, instances: float = 1.0) -> int:
    """The rehearsal catalog's shard size: the real 256 MiB scaled like the bytes, divided by `instances`."""
    return max(1024, round(REAL_SHARD_BYTES * scale / BYTES_DIVISOR / instances))


# --- tiny pictures ------------------------------------------------------------------------------------------------


class TinyImages:
    """A pool of small encoded pictures of one format, and members made of them: each one a picture with the
    member's number and padding spliced in (a JPEG COM segment, a private PNG chunk), sized around `mean` bytes."""

    def __init__(self, rng: random.Random, fmt: str, mean: int, pool: int = 32) -> None:
        self.rng, self.fmt, self.mean = rng, fmt, mean
        photos = PhotoPool(rng, 32)
        self.noise = rng.randbytes(1 << 16)
        self.pictures: list[bytes] = []
        self.gifs: list[bytes] = []
        side = 48
        while len(self.pictures) < pool:
            image = photos.image().resize((rng.randint(8, side), rng.randint(8, side)))
            data = self._encode(image)
            if len(data) > 0.8 * mean and side > 8:  # too big to be padded to the mean: draw smaller ones
                side = max(8, side - 4)
                continue
            self.pictures.append(data)
            if len(self.gifs) < 4:
                self.gifs.append(to_gif(image.resize((image.width * 2, image.height * 2))))

    def _encode(self, image) -> bytes:
        if self.fmt == "jpeg":
            return encode(image, "JPEG", quality=self.rng.choice([70, 80, 90]))
        if self.fmt == "chart":
            return encode(image.quantize(8), "PNG", compress_level=1)
        if self.fmt == "document":
            return encode(image.convert("L"), "PNG", compress_level=1)
        return encode(image, "PNG", compress_level=1)

    def member(self, number: int) -> bytes:
        picture = self.pictures[number % len(self.pictures)]
        target = int(self.mean * self.rng.uniform(0.6, 1.4))
        pad = max(0, target - len(picture) - 20)
        offset = self.rng.randrange(len(self.noise) - pad) if pad < len(self.noise) else 0
        payload = number.to_bytes(8, "big") + self.noise[offset : offset + pad]
        if picture[:2] == b"\xff\xd8":  # JPEG: a COM segment right after SOI
            payload = payload[:65533]
            return picture[:2] + b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload + picture[2:]
        # PNG: a private ancillary chunk after IHDR (8-byte signature + 25-byte IHDR chunk), with its CRC
        kind = b"rhPd"
        chunk = (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )
        return picture[:33] + chunk + picture[33:]

    def broken(self, kind: int) -> bytes:
        return (truncated(self.pictures[0]), b"", HTML_PAGE)[kind % 3]

    def gif(self, number: int) -> bytes:
        return self.gifs[number % len(self.gifs)]


# --- what each archive holds --------------------------------------------------------------------------------------


def _unique(rng: random.Random, n: int, make) -> list[str]:
    names: dict[str, None] = {}  # insertion-ordered: deterministic
    while len(names) < n:
        names[make()] = None
    return list(names)


_VFLAN_TASKS = ("VQA-E+visual_question_answering", "PACS+guitar_image_category_classification",
                "CLEVR+question_answer", "ExDark+object_recognition", "FairFace+gender_classification")  # fmt: skip
_SHAREGPT4V_WORDS = {"web_celebrity": ("Tom_Hanks", "Meryl_Streep", "Zhang_Ziyi", "Jackie_Chan"),
                     "web_landmark": ("Eiffel_Tower", "Great_Wall", "Taj_Mahal", "Petra"),
                     "wikiart": ("claude-monet", "vincent-van-gogh", "katsushika-hokusai", "frida-kahlo"),
                     "share_textvqa": ("",)}  # fmt: skip


def _member_names(a: Archive, rng: random.Random, n: int) -> tuple[list[str], list[str]]:
    """(directory entries, image member names) of an archive in its real shape."""
    if a.source == "coco":
        return ["train2017/"], [f"train2017/{i:012d}.jpg" for i in rng.sample(range(9, 581_930), n)]
    if a.source in ("gqa", "vg_part1", "vg_part2"):
        root = {"gqa": "images/", "vg_part1": "VG_100K/", "vg_part2": "VG_100K_2/"}[a.source]
        return [root], [f"{root}{i}.jpg" for i in rng.sample(range(1, 2_417_998), n)]
    if a.source == "textvqa":
        return ["train_images/"], _unique(rng, n, lambda: f"train_images/{rng.getrandbits(64):016x}.jpg")
    if a.source == "ai2d":
        dirs = ["ai2d/", "ai2d/annotations/", "ai2d/images/", "ai2d/questions/"]
        return dirs, [f"ai2d/images/{i}.png" for i in rng.sample(range(0, max(4_907, n)), n)]
    if a.source == "llava_pretrain":  # no root folder: 00453/004539375.jpg
        ids = rng.sample(range(10, max(600_000, 2 * n)), n)
        return sorted({f"{i // 10000:05d}/" for i in ids}), [f"{i // 10000:05d}/{i:09d}.jpg" for i in ids]
    if a.source == "allava_laion":  # folders stored in the chunks, dropped on extraction
        base = 100_000_000 + a.chunk * 1_000_000
        return [f"images_{a.chunk}/"], [f"images_{a.chunk}/{i}.jpeg" for i in rng.sample(range(base, base + 999_999), n)]  # fmt: skip
    if a.source == "allava_vflan":
        root = "images_191task_1k/"
        return [root], [
            f"{root}{rng.choice(_VFLAN_TASKS)}_{rng.randrange(1000)}_{i:06d}_{rng.getrandbits(32):08x}."
            + ("png" if i % 5 == 4 else "jpg")
            for i in range(n)
        ]
    if a.source in web_replicas.SHAREGPT4V:
        folder = web_replicas.SHAREGPT4V[a.source][1]
        prefix = f"data/{folder}/images/"
        words = _SHAREGPT4V_WORDS[a.source]
        names = [f"{rng.choice(words)}_{i:06d}.jpg" if words[0] else f"{i:04x}{rng.getrandbits(48):012x}.jpg"
                 for i in range(n)]  # fmt: skip
        if a.source == "wikiart":  # escaped Unicode, as the annotation JSONs spell it (P17)
            names[: len(web_replicas.WIKIART_ESCAPED)] = web_replicas.WIKIART_ESCAPED[:n]
        return ["data/", f"data/{folder}/", prefix], [prefix + x for x in names]
    if a.source == "dvqa":  # one top folder, flat charts
        return ["images/"], [f"images/bar_train_{i:08d}.png" for i in sorted(rng.sample(range(10**7), n))]
    if a.source == "docvqa":
        names = _unique(rng, n, lambda: f"train/documents/{rng.choice(['ffbf', 'fgbd', 'fhvp', 'jzhd', 'kfbw'])}"
                                        f"{rng.randrange(10**6):06d}_{rng.randint(1, 9)}.png")  # fmt: skip
        return ["train/", "train/documents/"], names
    raise ValueError(f"no rehearsal shape for {a.source}/{a.file}")


@dataclass
class Built:
    """What one archive job made: the replica record (relpath under the mirror root) and the usable data/ paths."""

    replica: ReplicaFile
    usable: list[str]  # the members that are images after extraction (names inside the archive)
    seconds: float


def _members(
    a: Archive, scale: float, seed: int
) -> tuple[Iterator[Member], list[str], list[str], list[str], int]:
    """The members in archive order (a generator: nothing held), the broken and normalized names, the usable names."""
    rng = random.Random(f"offline_mirror.rehearsal:{seed}:{a.source}:{a.file}")
    n = scaled(a.count, scale)
    mean = max(200, round(a.real_bytes / a.count / BYTES_DIVISOR))
    fmt = "jpeg" if a.fmt == "vflan" else a.fmt
    pictures = TinyImages(rng, fmt, mean)
    pngs = TinyImages(rng, "png", mean) if a.fmt == "vflan" else pictures
    dirs, names = _member_names(a, rng, n)
    bad_count = max(3, round(n * BROKEN_SHARE))
    order = rng.sample(range(n), bad_count + max(1, n // GIF_EVERY))
    bad = {names[i]: k for k, i in enumerate(order[:bad_count])}
    gifs = {names[i] for i in order[bad_count:]} if fmt == "jpeg" else set()
    usable = [x for x in names if x not in bad]
    members = sorted(names)

    def generate() -> Iterator[Member]:
        yield from (Member(d, None) for d in dirs)
        for number, name in enumerate(members):
            if name in bad:
                data = pictures.broken(bad[name])
            elif name in gifs:
                data = pictures.gif(number)
            else:
                data = (pngs if name.endswith(".png") else pictures).member(number)
            yield Member(name, data)

    return generate(), sorted(bad), sorted(gifs), usable, n


_STAMPS = {"coco": (2017, 8, 31, 19, 23, 40), "gqa": (2019, 2, 21, 11, 5, 2), "textvqa": (2019, 3, 28, 16, 44, 10),
           "vg_part1": (2016, 4, 12, 9, 30, 0), "vg_part2": (2016, 4, 12, 10, 2, 0), "ai2d": (2016, 10, 3, 14, 12, 56),
           "dvqa": (2018, 1, 8, 12, 0, 0), "docvqa": (2020, 7, 1, 10, 0, 0)}  # fmt: skip
# stored, not deflated, as upstream; the others deflate
_STORED = {"gqa", "vg_part1", "vg_part2", "llava_pretrain", "allava_laion", "allava_vflan"}


def _write_tar_gz(path: Path, members: Iterator[Member], stamp: tuple) -> None:
    """A tar.gz streamed member by member (tens of thousands of members: never the whole archive in memory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mtime = calendar.timegm((*stamp, 0, 0, 0))
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as out, gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1, mtime=mtime) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for m in members:
                info = tarfile.TarInfo(m.name)
                info.mtime, info.uname, info.gname = mtime, "root", "root"
                if m.data is None:
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                else:
                    info.size, info.mode = len(m.data), 0o644
                    tar.addfile(info, io.BytesIO(m.data))
    os.replace(tmp, path)


def _relpath(a: Archive, raw: dict) -> str:
    if a.serve == "http":
        from offline_mirror.build import relpath_for_url

        (entry,) = [f for f in raw["sources"][a.source]["files"] if f["name"] == a.file]
        first = entry["mirrors"][0]
        return relpath_for_url(first if isinstance(first, str) else first["url"])
    if a.serve == "drive":
        return f"drive-files/{_drive_id(raw, a)}/{a.file}"
    if a.serve == "inbox":
        return DOCVQA_RELPATH
    return f"hub/tmp/{a.source}-{a.file}"  # moved into the Hub stand-in's blobs by the parent


def _drive_id(raw: dict, a: Archive) -> str:
    (entry,) = [f for f in raw["sources"][a.source]["files"] if f["name"] == a.file]
    return next(m["id"] for m in entry["mirrors"] if isinstance(m, dict) and m["kind"] == "gdrive")


def build_archive(root: Path, a: Archive, scale: float, seed: int, raw: dict) -> Built:
    """Write one archive (zip or tar.gz) under `root`; a process-pool job."""
    began = time.perf_counter()
    members, bad, gifs, usable, _ = _members(a, scale, seed)
    relpath = _relpath(a, raw)
    path = Path(root) / relpath
    if a.file.endswith(".tar.gz"):
        if a.source == "docvqa":
            members = _with_docvqa_json(members, usable)
        _write_tar_gz(path, members, _STAMPS[a.source])
    else:
        compression = zipfile.ZIP_STORED if a.source in _STORED else zipfile.ZIP_DEFLATED
        spec = ReplicaSpec(a.source, a.file, "", lambda r, n: [], _STAMPS.get(a.source, (2023, 11, 2, 9, 12, 0)),
                           compression, force_zip64=a.source == "coco")  # fmt: skip
        if a.source == "ai2d":
            members = _with_ai2d_categories(members, usable)
        write_zip(path, spec, members)  # type: ignore[arg-type]  # any iterable of members: streamed
    replica = ReplicaFile(
        source=a.source, name=a.file, relpath=relpath, size=path.stat().st_size, sha256=sha256_file(path),
        images=len(usable), broken=len(bad), normalized=len(gifs), broken_members=tuple(bad),
        normalized_members=tuple(gifs),
    )  # fmt: skip
    return Built(replica, usable, time.perf_counter() - began)


def _with_ai2d_categories(members: Iterator[Member], usable: list[str]) -> Iterator[Member]:
    yield from members
    yield Member(
        "ai2d/categories.json", json.dumps({u.rsplit("/", 1)[1]: "lifeCycles" for u in usable}).encode()
    )


def _with_docvqa_json(members: Iterator[Member], usable: list[str]) -> Iterator[Member]:
    yield from members
    data = [{"questionId": i, "image": u.removeprefix("train/"), "question": "What is the date?"}
            for i, u in enumerate(usable)]  # fmt: skip
    yield Member("train/train_v1.0.json", json.dumps({"dataset_name": "docvqa", "data": data}).encode())


def _build_covers(root: Path, a: Archive, scale: float, seed: int) -> tuple[dict, list[str]]:
    """OCR-VQA's covers as files on the cover host (with every behaviour sprinkled in), and the mirror zip of the
    ones that answer; returns (web_replicas' covers spec, the usable ids)."""
    rng = random.Random(f"offline_mirror.rehearsal:{seed}:ocr_vqa")
    n = scaled(a.count, scale)
    pictures = TinyImages(rng, "jpeg", round(a.real_bytes / a.count / BYTES_DIVISOR))
    ids = [str(i) for i in rng.sample(range(10**8, 2 * 10**9), n)]
    behaviours = list(web_replicas.COVER_BEHAVIOURS)
    # every behaviour at least once; the dead ones at the real list's ~1 % rate, the others one per 20,000
    share = {b: (0.005 if b.startswith("dead") else 1 / 20_000) for b in behaviours}
    at: dict[int, str] = {}
    spots = iter(rng.sample(range(n), sum(max(1, round(n * s)) for s in share.values())))
    for b in behaviours:
        for _ in range(max(1, round(n * share[b]))):
            at[next(spots)] = b
    covers: dict[str, dict] = {}
    folder = Path(root) / web_replicas.COVERS
    folder.mkdir(parents=True, exist_ok=True)
    zipped: list[tuple[str, bytes]] = []
    usable = []
    for number, image_id in enumerate(ids):
        behaviour = at.get(number)
        spec = web_replicas.COVER_BEHAVIOURS.get(behaviour or "", {"ext": ".jpg"})
        file = f"{rng.getrandbits(40):010x}L{spec['ext']}"
        kind = spec.get("kind")
        if kind == "gif":
            data = pictures.gif(number)
        elif kind == "png":
            data = _png_cover(pictures.pictures[0])
        elif kind == "html":
            data = HTML_PAGE
        elif kind == "truncated":
            data = pictures.broken(0)
        else:
            data = pictures.member(number)
        if "status" not in spec:
            (folder / (f"moved-{file}" if spec.get("redirect") else file)).write_bytes(data)
        covers[image_id] = {"file": file, "behaviour": behaviour}
        outcome = web_replicas.cover_outcome(behaviour)
        if outcome != "missing":
            zipped.append((image_id, data))
        if outcome in ("ok", "normalized"):
            usable.append(image_id)
    zipped.sort()
    members = [Member("ocr_vqa/", None), Member("ocr_vqa/images/", None)]
    members += [Member(f"ocr_vqa/images/{i}.jpg", d) for i, d in zipped]
    spec = ReplicaSpec(
        "ocr_vqa", web_replicas.OCR_VQA_ZIP, "ocr_vqa/images/", lambda r, k: [], (2024, 4, 20, 8, 0, 0)
    )
    write_zip(Path(root) / web_replicas.ocr_vqa_zip_relpath(), spec, members)
    return covers, usable


def _png_cover(jpeg: bytes) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as image:
        rgba = image.convert("RGBA")
    return encode(rgba, "PNG", compress_level=1)


# --- the whole mirror ---------------------------------------------------------------------------------------------


def _job(args: tuple) -> Built:
    return build_archive(*args)


def build_rehearsal(
    root: Path,
    scale: float,
    *,
    seed: int = 0,
    instances: float = 1.0,
    workers: int | None = None,
    shipped: Path = SHIPPED_CATALOG,
) -> list[ReplicaFile]:
    """Write the rehearsal mirror under `root`; return the replica records (also in `root/replicas.json`)."""
    from offline_mirror.build import REPLICAS_JSON, load_raw_catalog

    began = time.perf_counter()
    root = Path(root)
    raw = load_raw_catalog(shipped)
    catalog = parse_catalog(raw)
    jobs = [a for a in ARCHIVES if a.serve != "covers"]
    jobs.sort(key=lambda a: -a.count)  # the long poles first
    workers = max(1, workers or usable_cores())
    with ProcessPoolExecutor(max_workers=workers) as pool:
        covers_future = pool.submit(
            _build_covers, root, next(a for a in ARCHIVES if a.serve == "covers"), scale, seed
        )
        built = list(pool.map(_job, [(root, a, scale, seed, raw) for a in jobs]))
        covers, cover_ids = covers_future.result()
    by_archive = {(b.replica.source, b.replica.name): b for b in built}

    # data/ paths of the usable images, by layout prefix: what the training JSONs cite
    paths: dict[str, list[str]] = {}
    for a in jobs:
        b = by_archive[(a.source, a.file)]
        (f,) = [f for f in catalog.sources[a.source].files if f.name == a.file]
        for name in b.usable:
            target = f.map_member(name)
            if target:
                paths.setdefault("/".join(target.split("/")[:2]), []).append(target)
    ocr = catalog.sources["ocr_vqa"].files[0].target
    paths.setdefault(ocr, []).extend(f"{ocr}/{i}.jpg" for i in cover_ids)

    replicas = [b.replica for b in built if b.replica.source in _HTTP_SOURCES]
    replicas += _commit_hub(
        root, catalog, [b.replica for b in built if _is_hub(b.replica)], paths, scale, seed
    )
    replicas += _web_spec(root, raw, [b.replica for b in built], covers, seed)
    docvqa = by_archive[("docvqa", "train.tar.gz")].replica
    write_text_atomic(root / REPLICAS_JSON, json.dumps([asdict(r) for r in replicas], indent=1) + "\n")
    files = sum(b.replica.images + b.replica.broken for b in built) + len(covers)
    seconds = time.perf_counter() - began
    record = {
        "scale": scale, "seed": seed, "instances": instances, "shard_bytes": shard_bytes(scale, instances),
        "docvqa": asdict(docvqa), "files": files, "build_seconds": round(seconds, 1),
        "files_per_second": round(files / seconds), "bytes": sum(r.size for r in replicas) + docvqa.size,
        "archive_seconds": {f"{b.replica.source}/{b.replica.name}": round(b.seconds, 1) for b in built},
    }  # fmt: skip
    write_text_atomic(root / REHEARSAL_JSON, json.dumps(record, indent=1) + "\n")
    return replicas


_HTTP_SOURCES = {a.source for a in _ARCHIVES if a.serve == "http"}


def _is_hub(r: ReplicaFile) -> bool:
    return r.relpath.startswith("hub/tmp/")


def _commit_hub(root: Path, catalog, built: list[ReplicaFile], paths: dict[str, list[str]], scale: float,
                seed: int) -> list[ReplicaFile]:  # fmt: skip
    """Move the Hub archives into the stand-in's blobs, add the LLaVA-Pretrain metadata JSON, MG-LLaVA's training
    and bbox JSONs (at the real sample counts x scale) and a small mix665k; one commit per repo and revision."""
    stand_in = hub.HubStandIn(root)
    stand_in.repos = {}
    staged: dict[tuple[str, str, str], dict[str, Path | bytes]] = {}
    pending: list[tuple[ReplicaFile, tuple[str, str, str], str]] = []

    def stage(r: ReplicaFile, content: Path | bytes, path: str | None = None) -> None:
        f = next(f for f in catalog.sources[r.source].files if f.name == r.name)
        m = f.mirrors[0]
        key = (m.repo_type, m.repo, m.revision or "main")
        repo_path = path or m.path
        staged.setdefault(key, {})[repo_path] = content
        pending.append((replace(r, name=repo_path.rsplit("/", 1)[-1]), key, repo_path))

    for r in built:
        stage(r, Path(root) / r.relpath)
    rng = random.Random(f"offline_mirror.rehearsal:{seed}:json")
    pretrain_paths = paths.get("LLaVA-Pretrain/images", [])
    meta = [{"id": p.rsplit("/", 1)[1][:-4], "image": p.split("/", 2)[2],
             "conversations": [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "a"}]}
            for p in pretrain_paths]  # fmt: skip
    stub = ReplicaFile("llava_pretrain", "blip_laion_cc_sbu_558k.json", "", 0, "", 0, 0, 0)
    stage(stub, json.dumps(meta).encode())
    del meta

    jsons = build_training_jsons(paths, rng, scale)
    glob_file = next(f for f in catalog.sources["mgllava_annotations"].files if f.name == "train_json")
    for repo_path, data in jsons.files(rng).items():
        name = repo_path.rsplit("/", 1)[-1]
        stub = ReplicaFile("mgllava_annotations", name, "", 0, "", 0, 0, 0)
        if repo_path.startswith("train_json/"):
            stage(
                replace(stub, name="train_json"),
                data,
                path=glob_file.mirrors[0].path_glob.split("*")[0] + name,
            )
        else:
            stage(stub, data)
    del jsons
    mix = ReplicaFile("llava_instruct", "llava_v1_5_mix665k.json", "", 0, "", 0, 0, 0)
    stage(mix, json.dumps([{"id": "mix_0", "conversations": [{"from": "human", "value": "hi"}]}]).encode())

    commits = {}
    for key, files in sorted(staged.items()):
        prefix = key[2] if all(c in "0123456789abcdef" for c in key[2]) and len(key[2]) >= 4 else ""
        commits[key] = stand_in.commit(key[0], key[1], files, prefix=prefix)
    stand_in.save()
    out = []
    for r, key, repo_path in pending:
        blob = stand_in.repos[stand_in.repo_key(key[0], key[1])]["commits"][commits[key]]["files"][repo_path]
        out.append(replace(r, relpath=blob["blob"], size=blob["size"], sha256=blob["sha256"]))
    (Path(root) / "hub" / "tmp").rmdir()
    return out


def build_training_jsons(paths: dict[str, list[str]], rng: random.Random, scale: float):
    """MG-LLaVA's two training JSONs at their real sample counts x scale, through the sample mirror's generator:
    the pretrain JSON cites every LLaVA-Pretrain and ALLaVA-LAION image (repeating some to reach 1,266K samples,
    as the real one cites more than those sets hold), the instruct JSON every other prefix plus ALLaVA's share."""

    # `training_json` adds a text-only sample after every 7th image sample and one repeated id: 8/7 per image
    def images_for(samples: int) -> int:
        return math.ceil((round(samples * scale) - 1) * 7 / 8)

    paths = dict(paths)
    laion = paths.get("allava_laion/images", [])
    pretrain_have = sum(len(paths.get(p, [])) for p in training_json.PRETRAIN_PREFIXES)
    want = images_for(PRETRAIN_SAMPLES)
    if want > pretrain_have and laion:
        paths["allava_laion/images"] = laion + [laion[i % len(laion)] for i in range(want - pretrain_have)]
    others = sum(
        len(v)
        for p, v in paths.items()
        if p in training_json.INSTRUCT_PREFIXES and not p.startswith("allava")
    )
    vflan = len(paths.get("allava_vflan/images", []))
    rest = max(2, images_for(INSTRUCT_SAMPLES) - others)
    share = rest // 2 if rest // 2 <= vflan else rest - vflan
    return training_json.build_training_jsons(paths, rng, allava_share=share)


def _web_spec(root: Path, raw: dict, built: list[ReplicaFile], covers: dict, seed: int) -> list[ReplicaFile]:
    """web_replicas.json for the Drive stand-in and the cover host, HF-path copies of the Drive files, and the
    OCR-VQA url list's record (written for the placeholder base; rewritten for the real one at serve time)."""
    spec: dict = {"seed": seed, "drive_files": {}, "folders": {}, "quota": [], "covers": covers,
                  "large_file_bytes": None}  # fmt: skip
    out = []
    for r in built:
        if r.source not in web_replicas.WEB_SOURCES:
            continue
        a = next(a for a in ARCHIVES if a.source == r.source and a.file == r.name)
        spec["drive_files"][_drive_id(raw, a)] = r.relpath
        if r.source == web_replicas.QUOTA_SOURCE:
            spec["quota"].append(_drive_id(raw, a))
        if r.source == "dvqa":
            spec["large_file_bytes"] = min(r.size, 100 * 1000 * 1000)  # the virus-scan page, as for 5.6 GB
        for m in next(f for f in raw["sources"][r.source]["files"] if f["name"] == r.name)["mirrors"]:
            # the next mirror: the same bytes at the Hub's resolve/ path, hard-linked
            if isinstance(m, dict) and m["kind"] == "huggingface":
                copy = Path(root) / web_replicas.HF_RESOLVE.format(repo=m["repo"], path=m["path"])
                copy.parent.mkdir(parents=True, exist_ok=True)
                copy.unlink(missing_ok=True)
                os.link(Path(root) / r.relpath, copy)
        out.append(r)
    folder = next(m["id"] for m in raw["sources"]["ocr_vqa"]["files"][0]["mirrors"]
                  if isinstance(m, dict) and m["kind"] == "gdrive")  # fmt: skip
    file_id = web_replicas.OCR_VQA_FOLDER_FILE_ID
    spec["url_list"] = f"drive-files/{file_id}/dataset.json"
    spec["drive_files"][file_id] = spec["url_list"]
    spec["folders"][folder] = ["OCR-VQA", [["1aN7Ff0mKg4XqLrVZp3sT0dWcB9uEyJhQ", "loadDataset.py"],
                                           [file_id, "dataset.json"]]]  # fmt: skip
    write_text_atomic(Path(root) / web_replicas.WEB_JSON, json.dumps(spec) + "\n")
    out.append(web_replicas.write_url_list(root, web_replicas.PLACEHOLDER_BASE))
    return out


def is_rehearsal(root: Path) -> bool:
    return (Path(root) / REHEARSAL_JSON).is_file()


def load_record(root: Path) -> dict:
    return json.loads((Path(root) / REHEARSAL_JSON).read_text())


def write_catalog(root: Path, base_url: str, replicas: list[ReplicaFile], *, out: Path | None = None) -> Path:
    """The mirror catalog (`build.write_catalog`) with the rehearsal's `shard_bytes` and DocVQA's expected count."""
    from offline_mirror.build import write_catalog as write_mirror_catalog

    record = load_record(root)
    path = write_mirror_catalog(root, base_url, replicas, shard_bytes=record["shard_bytes"], out=out)
    text = path.read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    raw["sources"]["docvqa"]["expected_images"] = record["docvqa"]["images"]
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    header += f"# Rehearsal mirror at scale {record['scale']}: shard_bytes {record['shard_bytes']}.\n"
    parse_catalog(raw, str(path))
    write_text_atomic(path, header + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True, width=120))
    return path


def real_instances(scale: float, instances: float = 1.0) -> dict[str, int]:
    """Extract instances each source should yield with this mirror (the table of docs/cluster.md at full scale)."""
    size = shard_bytes(scale, instances)
    out: dict[str, int] = {}
    for a in ARCHIVES:
        if a.serve == "covers":
            # URL shards hold ~1,000 URLs whatever the scale
            out[a.source] = math.ceil(scaled(a.count, scale) / 1000)
        elif a.file.endswith(".tar.gz"):
            out[a.source] = 1
        else:
            out[a.source] = out.get(a.source, 0) + min(
                256, max(1, math.ceil(a.real_bytes * scale / BYTES_DIVISOR / size))
            )
    return out
