"""Build an offline mirror: small, realistic replicas of the real plain-HTTP sources, and a catalog pointing at them.

Each replica keeps the real archive's name, URL path and internal layout (COCO's ``train2017/`` root, AI2D's
``ai2d/images/`` next to ``ai2d/annotations/`` and friends, VG's two zips under one ``VG_100K_2/`` URL path), holds
real encoded images of realistic size, and a few deliberately bad members, the kinds the real downloads contain:

* broken (must end in quarantine): a JPEG cut off halfway, a zero-byte file, an HTML error page saved as ``.jpg``;
  for AI2D a PNG whose IDAT data is corrupt (with a valid chunk CRC, so only the decoder can tell);
* normalized (valid after re-encoding): a GIF saved under an image name of another format;
* junk that the layout rules must drop: a ``__MACOSX/`` AppleDouble member (gqa), AI2D's JSON siblings.

The layouts here are written down from shared/reference/sources.md, independently of the catalog's
``member_prefix``/``target`` rules, so the tests can check the catalog's rules against them. Only each file's name
and URL come from the shipped catalog.

Everything is a function of the seed: fixed member order, fixed ``ZipInfo`` metadata, a seeded ``random.Random``
per source (never Pillow's ``effect_noise``, which draws from libc ``rand()``), so a rebuild with the same seed is
byte-identical and a refresh against it sees "unchanged".

Encoding is the cost (~1,200 images at the default size), so each source draws its pictures from a small pool of
blurred gradient-and-shape canvases and a noise tile: every image is a different crop of a canvas, with its own
sharp shapes and its own noise offset, which makes every member distinct at a few milliseconds per image.
"""

from __future__ import annotations

import calendar
import json
import os
import random
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from hashlib import sha256
from io import BytesIO
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

from mgdata.catalog import SHIPPED_CATALOG, parse_catalog
from mgdata.mirror import hub

__all__ = [
    "DEAD_MIRROR_SOURCE",
    "REPLICAS_JSON",
    "REPLICATED_SOURCES",
    "SHIPPED_CATALOG",
    "ReplicaFile",
    "build_mirror",
    "load_replicas",
    "relpath_for_url",
    "write_catalog",
]

REPLICAS_JSON = "replicas.json"
# The source whose catalog entry gets a dead mirror (a path the server answers with 404) placed first.
DEAD_MIRROR_SOURCE = "gqa"


@dataclass(frozen=True)
class ReplicaFile:
    """One generated remote file."""

    source: str
    name: str  # the catalog file name, e.g. "train2017.zip"
    relpath: str  # under the mirror root == the real URL's host + path, e.g. "images.cocodataset.org/zips/train2017.zip"
    size: int
    sha256: str
    images: int  # image members that validate OK, including the ones that only need normalization
    broken: int  # deliberately broken image members
    normalized: int  # members whose content mismatches the extension (valid after re-encoding)
    # The member names behind the counts, so tests and the demo can name what must land in quarantine.
    broken_members: tuple[str, ...] = field(default=())
    normalized_members: tuple[str, ...] = field(default=())
    missing: int = 0  # URL lists: URLs that are dead on purpose (their rows are status missing)


# --- what each replica looks like ---------------------------------------------------------------------------------


def _coco_name(rng: random.Random, n: int) -> list[str]:
    return [f"{i:012d}.jpg" for i in rng.sample(range(9, 581930), n)]


def _numeric_name(rng: random.Random, n: int) -> list[str]:  # GQA and VG: Visual Genome image ids
    return [f"{i}.jpg" for i in rng.sample(range(1, 2417998), n)]


def _hex16_name(rng: random.Random, n: int) -> list[str]:  # TextVQA: 16 hex digits (Open Images ids)
    names: dict[str, None] = {}  # insertion-ordered: a set's order would depend on PYTHONHASHSEED
    while len(names) < n:
        names[f"{rng.getrandbits(64):016x}.jpg"] = None
    return list(names)


def _ai2d_name(rng: random.Random, n: int) -> list[str]:
    return [f"{i}.png" for i in rng.sample(range(0, 4907), n)]


@dataclass(frozen=True)
class _Spec:
    source: str
    file: str  # the file's name in the catalog
    root: str  # the folder the images sit in inside the archive
    names: Callable[[random.Random, int], list[str]]
    date_time: tuple[int, int, int, int, int, int]  # every member's timestamp (fixed: determinism)
    compression: int = zipfile.ZIP_DEFLATED
    force_zip64: bool = False  # write every member with Zip64 extra fields in its local header
    macosx_junk: bool = False  # add a __MACOSX/ AppleDouble member, as zips made with macOS Finder carry
    diagrams: bool = (
        False  # AI2D: PNG diagrams plus the annotations/, questions/ and categories.json siblings
    )


_SPECS: dict[str, _Spec] = {
    s.source: s
    for s in [
        _Spec("coco", "train2017.zip", "train2017/", _coco_name, (2017, 8, 31, 19, 23, 40), force_zip64=True),
        _Spec(
            "gqa",
            "images.zip",
            "images/",
            _numeric_name,
            (2019, 2, 21, 11, 5, 2),
            zipfile.ZIP_STORED,
            macosx_junk=True,
        ),
        _Spec("textvqa", "train_val_images.zip", "train_images/", _hex16_name, (2019, 3, 28, 16, 44, 10)),
        _Spec(
            "vg_part1", "images.zip", "VG_100K/", _numeric_name, (2016, 4, 12, 9, 30, 0), zipfile.ZIP_STORED
        ),
        _Spec(
            "vg_part2",
            "images2.zip",
            "VG_100K_2/",
            _numeric_name,
            (2016, 4, 12, 10, 2, 0),
            zipfile.ZIP_STORED,
        ),
        _Spec("ai2d", "ai2d-all.zip", "ai2d/images/", _ai2d_name, (2016, 10, 3, 14, 12, 56), diagrams=True),
    ]
}
# The plain-HTTP replicas built here, then the Hugging Face ones (mgdata.mirror.hub, served by its Hub stand-in).
# The Drive and URL-list replicas (mgdata.mirror.web_replicas, served by its Drive and image-host stand-ins).
WEB_SOURCES: tuple[str, ...] = ("share_textvqa", "web_celebrity", "web_landmark", "wikiart", "dvqa", "ocr_vqa")  # fmt: skip
REPLICATED_SOURCES: tuple[str, ...] = tuple(_SPECS) + hub.HUB_SOURCES + WEB_SOURCES


# --- pictures -----------------------------------------------------------------------------------------------------

_CANVAS = 1024  # pool canvases and noise tiles; every image is a crop, so max dims are 800 x 800
_POOL = 8  # canvases per source (fewer for a small replica: they are a fixed cost)
_NOISE_AMPLITUDE = 7  # +-7 grey levels of per-pixel noise: keeps JPEGs at a realistic 40-150 KB


def _color(rng: random.Random, lo: int = 0, hi: int = 255) -> tuple[int, int, int]:
    return (rng.randint(lo, hi), rng.randint(lo, hi), rng.randint(lo, hi))


def _shapes(draw: ImageDraw.ImageDraw, rng: random.Random, w: int, h: int, count: int) -> None:
    for _ in range(count):
        x0, y0 = rng.randrange(-w // 8, w), rng.randrange(-h // 8, h)
        x1, y1 = x0 + rng.randint(w // 12, w // 2), y0 + rng.randint(h // 12, h // 2)
        kind = rng.randrange(4)
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=_color(rng))
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=_color(rng))
        elif kind == 2:
            draw.polygon([(rng.randrange(w), rng.randrange(h)) for _ in range(3)], fill=_color(rng))
        else:
            draw.line(
                [(rng.randrange(w), rng.randrange(h)) for _ in range(4)],
                fill=_color(rng),
                width=rng.randint(2, 9),
            )


def _canvas(rng: random.Random) -> Image.Image:
    """A smooth photo-like background: three rotated gradients as channels, soft shapes, blurred. Drawn at half
    size and scaled up, which softens it further at a quarter of the cost."""
    half = _CANVAS // 2
    gradient = Image.linear_gradient("L").resize((half, half), Image.Resampling.BILINEAR)
    channels = []
    for _ in range(3):
        lo, hi = rng.randint(0, 110), rng.randint(145, 255)
        channel = gradient.rotate(
            rng.uniform(0, 360), Image.Resampling.BILINEAR, fillcolor=rng.randint(lo, hi)
        )
        channels.append(channel.point(lambda v, lo=lo, hi=hi: lo + v * (hi - lo) // 255))
    image = Image.merge("RGB", channels)
    _shapes(ImageDraw.Draw(image), rng, half, half, rng.randint(6, 12))
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(1.5, 4.0)))
    return image.resize((_CANVAS, _CANVAS), Image.Resampling.BILINEAR)


def _noise_tile(rng: random.Random, amplitude: int, bands: int) -> Image.Image:
    """Uniform noise in 0..2*amplitude, to be added with offset -amplitude."""
    mode = "RGB" if bands == 3 else "L"
    raw = Image.frombytes(mode, (_CANVAS, _CANVAS), rng.randbytes(_CANVAS * _CANVAS * bands))
    return raw.point(lambda v: v * (2 * amplitude + 1) // 256)


def _dims(rng: random.Random) -> tuple[int, int]:
    """About 640x480, varying 320-800 on the long side, in the aspect ratios photos come in."""
    long_side = min(800, max(320, int(rng.gauss(640, 110))))
    aspect = rng.choice([4 / 3, 4 / 3, 4 / 3, 3 / 2, 16 / 9, 1.0])
    short_side = max(240, round(long_side / aspect))
    return (long_side, short_side) if rng.random() < 0.75 else (short_side, long_side)


class _PhotoPool:
    """Distinct photo-like RGB images, cheaply: a crop of a pool canvas, a few sharp shapes, an offset of a noise tile."""

    def __init__(self, rng: random.Random, images: int) -> None:
        self.rng = rng
        self.canvases = [_canvas(rng) for _ in range(min(_POOL, max(2, images // 16)))]
        self.noise = _noise_tile(rng, _NOISE_AMPLITUDE, 3)

    def image(self) -> Image.Image:
        rng = self.rng
        w, h = _dims(rng)
        x, y = rng.randrange(_CANVAS - w + 1), rng.randrange(_CANVAS - h + 1)
        image = rng.choice(self.canvases).crop((x, y, x + w, y + h))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        _shapes(ImageDraw.Draw(image), rng, w, h, rng.randint(2, 5))
        nx, ny = rng.randrange(_CANVAS - w + 1), rng.randrange(_CANVAS - h + 1)
        return ImageChops.add(image, self.noise.crop((nx, ny, nx + w, ny + h)), 1.0, -_NOISE_AMPLITUDE)

    def jpeg(self) -> bytes:
        return _encode(self.image(), "JPEG", quality=self.rng.choice([85, 88, 90, 92]))


_LABELS = (
    "sun", "leaf", "water", "caterpillar", "pupa", "adult", "egg", "larva", "evaporation", "condensation",
    "precipitation", "root", "stem", "flower", "soil", "moon", "earth", "crust", "mantle", "core", "producer",
    "consumer", "decomposer", "grass", "rabbit", "fox", "hawk", "nymph", "full moon", "new moon",
)  # fmt: skip


class _DiagramPool:
    """AI2D-like PNG diagrams: white background, shaded drawings with outlines, labelled text boxes, arrows."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.shading = _noise_tile(rng, 4, 1).convert("RGB")  # 0..8, subtracted: a printed-texture look
        self.font = ImageFont.load_default(14)

    def image(self) -> tuple[Image.Image, dict]:
        rng = self.rng
        w, h = rng.randint(420, 800), rng.randint(320, 640)
        image = Image.new("RGB", (w, h), "white")
        mask = Image.new("L", (w, h), 0)
        draw, draw_mask = ImageDraw.Draw(image), ImageDraw.Draw(mask)
        blobs = {}
        for i in range(rng.randint(3, 6)):
            x0, y0 = rng.randrange(w - 60), rng.randrange(h - 60)
            box = (x0, y0, x0 + rng.randint(40, w // 3), y0 + rng.randint(40, h // 3))
            if rng.random() < 0.6:
                draw.ellipse(box, fill=_color(rng, 40, 230), outline="black", width=2)
                draw_mask.ellipse(box, fill=255)
            else:
                draw.rectangle(box, fill=_color(rng, 40, 230), outline="black", width=2)
                draw_mask.rectangle(box, fill=255)
            blobs[f"B{i}"] = {
                "id": f"B{i}",
                "polygon": [[box[0], box[1]], [box[2], box[1]], [box[2], box[3]]],
            }
        x, y = rng.randrange(_CANVAS - w + 1), rng.randrange(_CANVAS - h + 1)
        shaded = ImageChops.subtract(image, self.shading.crop((x, y, x + w, y + h)))
        image.paste(shaded, (0, 0), mask)
        texts, arrows = {}, {}
        for i in range(rng.randint(4, 9)):
            label = rng.choice(_LABELS)
            tx, ty = rng.randrange(w - 130), rng.randrange(h - 30)
            draw.rectangle((tx, ty, tx + 120, ty + 24), fill="white", outline="black")
            draw.text((tx + 6, ty + 4), label, fill="black", font=self.font)
            end = (rng.randrange(w), rng.randrange(h))
            draw.line((tx + 60, ty + 24, *end), fill="black", width=2)
            draw.ellipse((end[0] - 4, end[1] - 4, end[0] + 4, end[1] + 4), fill="black")
            texts[f"T{i}"] = {"id": f"T{i}", "value": label, "rectangle": [[tx, ty], [tx + 120, ty + 24]]}
            arrows[f"A{i}"] = {"id": f"A{i}", "polygon": [[tx + 60, ty + 24], list(end)]}
        annotation = {"blobs": blobs, "text": texts, "arrows": arrows, "arrowHeads": {}, "relationships": {}}
        return image, annotation

    def png(self) -> tuple[bytes, dict]:
        image, annotation = self.image()
        # Level 1: the encoder is most of the build time at level 6, for 15% smaller files.
        return _encode(image, "PNG", compress_level=1), annotation


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


# --- broken members -----------------------------------------------------------------------------------------------

_HTML_PAGE = b"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>404 Not Found</title></head>
<body>
<h1>Not Found</h1>
<p>The requested URL was not found on this server.</p>
<hr><address>Apache/2.4.41 (Ubuntu) Server at images.example.org Port 443</address>
</body>
</html>
"""


def _decodes(data: bytes) -> str | None:
    """The Pillow format when ``data`` fully decodes, else None."""
    try:
        with Image.open(BytesIO(data)) as image:
            image.load()
            return image.format
    except Exception:
        return None


def _truncated(data: bytes) -> bytes:
    cut = data[: len(data) // 2]
    assert _decodes(cut) is None, "a JPEG cut at half must not decode"
    return cut


def _corrupt_idat(png: bytes, rng: random.Random) -> bytes:
    """Overwrite a run of the first IDAT chunk's deflate stream, and recompute the chunk CRC so that only the
    decoder can tell. Retries other offsets until Pillow's full decode fails (deterministic under the seed)."""
    pos = 8
    while True:
        length, kind = struct.unpack(">I4s", png[pos : pos + 8])
        if kind == b"IDAT":
            break
        pos += 12 + length
    start, end = pos + 8, pos + 8 + length
    for _ in range(64):
        at = rng.randrange(start + 2 + length // 8, start + length // 2)
        body = bytearray(png[start:end])
        run = rng.randbytes(48)
        body[at - start : at - start + len(run)] = run
        crc = struct.pack(">I", zlib.crc32(kind + bytes(body)) & 0xFFFFFFFF)
        corrupt = png[:start] + bytes(body) + crc + png[end + 4 :]
        if _decodes(corrupt) is None:
            return corrupt
    raise RuntimeError("could not corrupt the PNG's IDAT data so that it fails to decode")


def _gif(image: Image.Image) -> bytes:
    small = image.resize((image.width // 2, image.height // 2), Image.Resampling.BILINEAR)
    data = _encode(small.quantize(128, method=Image.Quantize.FASTOCTREE), "GIF")
    assert _decodes(data) == "GIF"
    return data


def _apple_double(name: str) -> bytes:
    """The AppleDouble resource-fork file macOS Finder puts under __MACOSX/ next to every zipped file."""
    header = b"\x00\x05\x16\x07" + b"\x00\x02\x00\x00" + b"Mac OS X        " + b"\x00\x02"
    entries = struct.pack(">III", 9, 50, 32) + struct.pack(">III", 2, 82, 286)
    return (header + entries).ljust(82, b"\x00") + f"com.apple.quarantine;{name}".encode().ljust(286, b"\x00")


# --- archives -----------------------------------------------------------------------------------------------------


@dataclass
class _Member:
    name: str
    data: bytes | None  # None: a directory entry


def _generate(spec: _Spec, images: int, seed: int) -> tuple[list[_Member], list[str], list[str]]:
    """The members of one replica, in archive order, plus the broken and the normalized member names."""
    if images < 2:
        raise ValueError(
            f"images_per_source must be at least 2 (one of them is the mis-named GIF), got {images}"
        )
    # A str seed is hashed with sha512, not hash(): the same stream in every process.
    rng = random.Random(f"mgdata.mirror:{seed}:{spec.source}")
    ext = ".png" if spec.diagrams else ".jpg"
    names = spec.names(rng, images + 3)  # + broken: truncated/corrupt, zero bytes, HTML page
    good_names, bad_names = names[:images], names[images:]
    gif_name = good_names[-1]

    files: dict[str, bytes] = {}
    annotations: dict[str, dict] = {}
    if spec.diagrams:
        pool = _DiagramPool(rng)
        for name in good_names[:-1]:
            files[name], annotations[name] = pool.png()
        damaged = _corrupt_idat(pool.png()[0], rng)
        files[gif_name] = _gif(pool.image()[0])
    else:
        photos = _PhotoPool(rng, images)
        for name in good_names[:-1]:
            files[name] = photos.jpeg()
        damaged = _truncated(photos.jpeg())
        files[gif_name] = _gif(photos.image())
    files[bad_names[0]] = damaged
    files[bad_names[1]] = b""
    files[bad_names[2]] = _HTML_PAGE
    assert all(name.endswith(ext) for name in files)

    members: list[_Member] = []
    top = spec.root.split("/")[0] + "/"
    dirs = [top] if top == spec.root else [top, spec.root]
    if spec.diagrams:
        dirs = [top, f"{top}annotations/", spec.root, f"{top}questions/"]
    members += [_Member(d, None) for d in dirs]
    members += [_Member(spec.root + name, files[name]) for name in sorted(files)]
    if spec.diagrams:
        members += _ai2d_siblings(top, annotations, rng)
    if spec.macosx_junk:
        junk = spec.root + sorted(files)[0]
        members += [_Member("__MACOSX/", None), _Member("__MACOSX/" + spec.root, None)]
        members.append(_Member("__MACOSX/" + spec.root + "._" + junk.rsplit("/", 1)[1], _apple_double(junk)))
    members.sort(key=lambda m: m.name)
    return members, [spec.root + n for n in bad_names], [spec.root + gif_name]


def _ai2d_siblings(top: str, annotations: dict[str, dict], rng: random.Random) -> list[_Member]:
    """AI2D's non-image members: per-image annotation and question JSONs, and categories.json."""
    categories = [
        "lifeCycles",
        "foodChainsWebs",
        "partsOfA",
        "moonPhaseEquinox",
        "rockCycle",
        "waterCNPCycle",
    ]
    out = [_Member(f"{top}categories.json", _json({n: rng.choice(categories) for n in sorted(annotations)}))]
    for name, annotation in sorted(annotations.items()):
        out.append(_Member(f"{top}annotations/{name}.json", _json(annotation)))
        label = rng.choice(list(annotation["text"].values()))["value"]
        questions = {
            "imageName": name,
            "questions": {
                f"What does the label {label!r} point to?": {
                    "abcLabel": False,
                    "answerTexts": ["a", "b", "c", "d"],
                    "correctAnswer": rng.randrange(4),
                    "questionId": f"{name.split('.')[0]}-0",
                }
            },
        }
        out.append(_Member(f"{top}questions/{name}.json", _json(questions)))
    return out


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True).encode()


def _write_zip(path: Path, spec: _Spec, members: list[_Member]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out, zipfile.ZipFile(out, "w", compresslevel=1) as archive:
            for member in members:
                info = zipfile.ZipInfo(member.name, date_time=spec.date_time)
                info.create_system = 3  # Unix, whatever the building machine is
                if member.data is None:
                    info.external_attr = (0o40755 << 16) | 0x10
                    archive.writestr(info, b"")
                    continue
                info.external_attr = 0o100644 << 16
                info.compress_type = spec.compression
                if spec.force_zip64:
                    with archive.open(info, "w", force_zip64=True) as handle:
                        handle.write(member.data)
                else:
                    archive.writestr(info, member.data)
        # A fixed mtime too: a rebuilt, byte-identical replica keeps its Last-Modified and the server's ETag.
        stamp = calendar.timegm((*spec.date_time, 0, 0, 0))
        os.utime(tmp, (stamp, stamp))
        os.replace(tmp, path)  # a server running on the same root never serves a half-written archive
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha256(path: Path) -> str:
    digest = sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- public API ---------------------------------------------------------------------------------------------------


def relpath_for_url(url: str) -> str:
    """The mirror-root-relative path of a real URL: its host and path, e.g. ``images.cocodataset.org/zips/x.zip``."""
    parts = urlsplit(url)
    if not parts.netloc or not parts.path.strip("/"):
        raise ValueError(f"cannot derive a mirror path from {url!r}")
    return f"{parts.netloc}/{parts.path.strip('/')}"


def _first_url(catalog_file: dict) -> str:
    first = catalog_file["mirrors"][0]
    url = first if isinstance(first, str) else first.get("url")
    if not url:
        raise ValueError(f"{catalog_file['name']}: the first mirror is not an HTTP URL")
    return url


def _shipped_file(raw: dict, source: str, name: str) -> dict:
    body = raw["sources"].get(source)
    if body is None:
        raise ValueError(f"the shipped catalog has no source {source!r}")
    for catalog_file in body.get("files", []):
        if catalog_file["name"] == name:
            return catalog_file
    raise ValueError(f"the shipped catalog's source {source!r} has no file {name!r}")


def _load_raw(path: Path) -> dict:
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    parse_catalog(raw, str(path))  # fail early, naming the field, on a broken shipped catalog
    return raw


def build_mirror(
    root: Path,
    *,
    images_per_source: int = 200,
    sources: list[str] | None = None,
    seed: int = 0,
    shipped: Path = SHIPPED_CATALOG,
    workers: int | None = None,
) -> list[ReplicaFile]:
    """Generate the replicas under ``root`` (at their URL paths) and ``root/replicas.json``; return the records.

    ``images_per_source`` counts the valid image members of each replica (one of them is a mis-named GIF); three
    broken members come on top. The same arguments give byte-identical archives.
    """
    root = Path(root)
    names = list(REPLICATED_SOURCES) if sources is None else list(sources)
    unknown = [n for n in names if n not in REPLICATED_SOURCES]
    if unknown:
        raise ValueError(f"cannot replicate {unknown}; replicable sources: {list(REPLICATED_SOURCES)}")
    raw = _load_raw(shipped)
    hub_names = [n for n in names if n in hub.HUB_SOURCES]
    web_names = [n for n in names if n in WEB_SOURCES]
    names = [n for n in names if n in _SPECS]
    relpaths = {n: relpath_for_url(_first_url(_shipped_file(raw, n, _SPECS[n].file))) for n in names}

    def build_one(name: str) -> ReplicaFile:
        spec = _SPECS[name]
        members, broken, normalized = _generate(spec, images_per_source, seed)
        path = root / relpaths[name]
        _write_zip(path, spec, members)
        return ReplicaFile(
            source=name,
            name=spec.file,
            relpath=relpaths[name],
            size=path.stat().st_size,
            sha256=_sha256(path),
            images=images_per_source,
            broken=len(broken),
            normalized=len(normalized),
            broken_members=tuple(broken),
            normalized_members=tuple(normalized),
        )

    # One thread per source: zlib and some of Pillow's C code release the GIL, so a second core helps a little
    # (measured 18.5 s CPU in 17.6 s wall on a loaded 2-core box). Each source has its own seeded generator,
    # so the output does not depend on scheduling.
    workers = max(1, min(len(names), workers if workers is not None else (os.cpu_count() or 1)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mirror-build") as pool:
        replicas = list(pool.map(build_one, names))
    if web_names:
        from mgdata.mirror.web_replicas import build_web_replicas

        replicas += build_web_replicas(root, raw, web_names, images_per_source, seed)
    if (
        hub_names
    ):  # after every other replica: MG-LLaVA's training JSONs cite their images (mirror/training_json)
        replicas += hub.build_hub_replicas(
            root, hub_names, images_per_source=images_per_source, seed=seed, raw_catalog=raw, others=replicas
        )
    write_text_atomic(root / REPLICAS_JSON, json.dumps([asdict(r) for r in replicas], indent=2) + "\n")
    return replicas


def load_replicas(root: Path) -> list[ReplicaFile]:
    """The records ``build_mirror`` wrote to ``root/replicas.json``."""
    records = json.loads((Path(root) / REPLICAS_JSON).read_text(encoding="utf-8"))
    return [
        ReplicaFile(
            **{
                **r,
                "broken_members": tuple(r.get("broken_members", ())),
                "normalized_members": tuple(r.get("normalized_members", ())),
            }
        )
        for r in records
    ]


class _NoAliasDumper(yaml.SafeDumper):
    # The shipped catalog's YAML merge keys share lists between entries; write them out in full, not as &id001.
    def ignore_aliases(self, data: object) -> bool:
        return True


def write_catalog(
    root: Path,
    base_url: str,
    replicas: list[ReplicaFile],
    *,
    shipped: Path = SHIPPED_CATALOG,
    shard_bytes: int = 4 * 1024 * 1024,
    out: Path | None = None,
) -> Path:
    """Write the shipped catalog with every replicated file pointed at ``base_url`` and carrying the replica's size
    and sha256; sources without a replica stay as shipped. Returns the path written (default ``root/catalog.yaml``)."""
    base = base_url.rstrip("/")
    raw = _load_raw(shipped)
    raw.setdefault("defaults", {})["shard_bytes"] = shard_bytes
    expected: dict[str, int] = {}
    hub.point_catalog(raw, base, [r for r in replicas if hub.is_hub_replica(r)])
    if any(r.source in WEB_SOURCES for r in replicas):
        from mgdata.mirror.web_replicas import point_catalog

        point_catalog(raw, base, root, [r for r in replicas if r.source in WEB_SOURCES])
    for replica in (r for r in replicas if not hub.is_hub_replica(r) and r.source not in WEB_SOURCES):
        catalog_file = _shipped_file(raw, replica.source, replica.name)
        mirrors = [f"{base}/{replica.relpath}"]
        if replica.source == DEAD_MIRROR_SOURCE:
            mirrors.insert(
                0, f"{base}/dead/{replica.relpath}"
            )  # 404: exercises the fallback to the next mirror
        catalog_file["mirrors"] = mirrors
        catalog_file["size"] = replica.size
        catalog_file["checksums"] = {"sha256": replica.sha256}
        expected[replica.source] = expected.get(replica.source, 0) + replica.images
    for source, count in expected.items():
        raw["sources"][source]["expected_images"] = count

    out = Path(out) if out is not None else Path(root) / "catalog.yaml"
    parse_catalog(raw, str(out))
    header = (
        f"# Generated by mgdata.mirror from {Path(shipped).name} for the offline mirror at {base}.\n"
        f"# Replicated sources: {', '.join(sorted({r.source for r in replicas})) or 'none'}. Do not edit: rebuild it.\n"
    )
    body = yaml.dump(raw, Dumper=_NoAliasDumper, sort_keys=False, allow_unicode=True, width=120)
    write_text_atomic(out, header + body)
    return out


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file so readers never see it half-written (the demo polls for the ready file and catalog)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
