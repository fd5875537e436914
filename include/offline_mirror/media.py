"""What every replica is made of: pictures, deliberately broken members, deterministic zips, and the record of a file.

`build` (the plain-HTTP replicas), `hub` (the Hugging Face ones) and `web_replicas` (Drive, URL lists, DocVQA) all draw
their images from `PhotoPool` / `DiagramPool`, spoil members with `truncated`, `to_gif`, `HTML_PAGE`, and write
archives with `write_zip` (fixed member order, timestamps and mtime, so a rebuild with the same seed is
byte-identical). None of them imports another for these: this module imports nothing from the mirror.
"""

from __future__ import annotations

import calendar
import os
import random
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from hashlib import sha256
from io import BytesIO
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont


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


@dataclass(frozen=True)
class ReplicaSpec:
    """How one replica zip is laid out and written: its members' names, timestamps, compression."""

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


class PhotoPool:
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
        return encode(self.image(), "JPEG", quality=self.rng.choice([85, 88, 90, 92]))


_LABELS = (
    "sun", "leaf", "water", "caterpillar", "pupa", "adult", "egg", "larva", "evaporation", "condensation",
    "precipitation", "root", "stem", "flower", "soil", "moon", "earth", "crust", "mantle", "core", "producer",
    "consumer", "decomposer", "grass", "rabbit", "fox", "hawk", "nymph", "full moon", "new moon",
)  # fmt: skip


class DiagramPool:
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
        return encode(image, "PNG", compress_level=1), annotation


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


# --- broken members -----------------------------------------------------------------------------------------------

HTML_PAGE = b"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>404 Not Found</title></head>
<body>
<h1>Not Found</h1>
<p>The requested URL was not found on this server.</p>
<hr><address>Apache/2.4.41 (Ubuntu) Server at images.example.org Port 443</address>
</body>
</html>
"""


def decoded_format(data: bytes) -> str | None:
    """The Pillow format when ``data`` fully decodes, else None."""
    try:
        with Image.open(BytesIO(data)) as image:
            image.load()
            return image.format
    except Exception:
        return None


def truncated(data: bytes) -> bytes:
    cut = data[: len(data) // 2]
    assert decoded_format(cut) is None, "a JPEG cut at half must not decode"
    return cut


def corrupt_idat(png: bytes, rng: random.Random) -> bytes:
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
        if decoded_format(corrupt) is None:
            return corrupt
    raise RuntimeError("could not corrupt the PNG's IDAT data so that it fails to decode")


def to_gif(image: Image.Image) -> bytes:
    small = image.resize((image.width // 2, image.height // 2), Image.Resampling.BILINEAR)
    data = encode(small.quantize(128, method=Image.Quantize.FASTOCTREE), "GIF")
    assert decoded_format(data) == "GIF"
    return data


def apple_double(name: str) -> bytes:
    """The AppleDouble resource-fork file macOS Finder puts under __MACOSX/ next to every zipped file."""
    header = b"\x00\x05\x16\x07" + b"\x00\x02\x00\x00" + b"Mac OS X        " + b"\x00\x02"
    entries = struct.pack(">III", 9, 50, 32) + struct.pack(">III", 2, 82, 286)
    return (header + entries).ljust(82, b"\x00") + f"com.apple.quarantine;{name}".encode().ljust(286, b"\x00")


# --- archives -----------------------------------------------------------------------------------------------------


@dataclass
class Member:
    name: str
    data: bytes | None  # None: a directory entry


def write_zip(path: Path, spec: ReplicaSpec, members: list[Member]) -> None:
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


def sha256_file(path: Path) -> str:
    digest = sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file so readers never see it half-written (the demo polls for the ready file and catalog)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
