"""A corruption corpus of JPEGs, for the tests and `bench.image_check`: every flavour Pillow writes, damaged in every way
a download or a disk damages one.

`corpus()` yields (name, bytes) pairs, deterministically (seeded): for each base JPEG (baseline at 4:2:0, 4:2:2 and
4:4:4, progressive, optimised Huffman tables, greyscale, CMYK, restart markers, EXIF + ICC, an odd size, a large
one, baseline and progressive), the variants

- truncated at offsets spread over the whole file and densely inside the headers;
- one bit flipped, half of them in the marker segments (quantisation and Huffman tables, frame and scan headers),
  half in the entropy-coded scan data;
- a byte set to 0x00 or 0xFF, a run of random bytes written over the data;
- a marker inserted into scan data (restart markers out of order, an early EOI, tables, a second SOS, reserved);
- one marker segment removed, one segment's length field off by one, zero or 0xFFFF;
- EOI missing, doubled, replaced, or followed by garbage.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO

from PIL import Image, ImageCms, ImageDraw

_STANDALONE = {0xD8, 0xD9, 0x01} | set(range(0xD0, 0xD8))  # markers without a length field
_INSERTED_MARKERS = (0xD0, 0xD3, 0xD7, 0xD9, 0xC4, 0xDB, 0xDA, 0xC0, 0xFE, 0x01, 0xE1, 0xF0)


@dataclass(frozen=True)
class Segment:
    marker: int
    start: int  # offset of the 0xFF
    end: int  # offset after the segment (after the scan data for SOS)
    scan_start: int | None = None  # for SOS: where the entropy-coded data begins


def _photo(size: tuple[int, int], seed: int) -> Image.Image:
    """Real-shaped content: gradients, edges, text-like strokes and noise, so every Huffman code path is used."""
    rng = random.Random(seed)
    w, h = size
    im = Image.linear_gradient("L").resize(size).convert("RGB")
    im = Image.merge(
        "RGB",
        (
            im.getchannel(0),
            im.getchannel(0).rotate(90).resize(size),
            Image.frombytes("L", size, rng.randbytes(w * h)).point(lambda v: 64 + v // 2),
        ),
    )
    draw = ImageDraw.Draw(im)
    for _ in range(12):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        box = (x0, y0, min(w - 1, x0 + rng.randrange(4, 40)), min(h - 1, y0 + rng.randrange(4, 40)))
        draw.rectangle(box, fill=tuple(rng.randrange(256) for _ in range(3)))
        draw.line(
            (rng.randrange(w), rng.randrange(h), rng.randrange(w), rng.randrange(h)), fill=(0, 0, 0), width=2
        )
    return im


def _encode(im: Image.Image, **options) -> bytes:
    buffer = BytesIO()
    im.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def bases() -> dict[str, bytes]:
    photo = _photo((96, 72), 1)
    odd = _photo((123, 77), 2)
    large = _photo((640, 480), 3)
    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    icc[24:36] = bytes(
        12
    )  # the header's creation date, and the profile id over it: zero, so the corpus is fixed
    icc[84:100] = bytes(16)
    exif = Image.Exif()
    exif[0x010F] = "camera"
    exif[0x0112] = 6  # orientation: Pillow ignores it on open, as the trainer does
    return {
        "baseline-420": _encode(photo, quality=85),
        "baseline-422": _encode(photo, quality=85, subsampling=1),
        "baseline-444": _encode(photo, quality=95, subsampling=0),
        "progressive": _encode(photo, quality=85, progressive=True),
        "progressive-optimized-444": _encode(
            photo, quality=90, progressive=True, optimize=True, subsampling=0
        ),
        "optimized": _encode(photo, quality=75, optimize=True),
        "grayscale": _encode(photo.convert("L"), quality=85),
        "grayscale-progressive": _encode(photo.convert("L"), quality=85, progressive=True),
        "cmyk": _encode(photo.convert("CMYK"), quality=85),
        "restart-markers": _encode(photo, quality=85, restart_marker_blocks=3),
        "exif-icc": _encode(photo, quality=85, exif=exif.tobytes(), icc_profile=bytes(icc)),
        "odd-size": _encode(odd, quality=95),
        "large-baseline": _encode(large, quality=90),
        "large-progressive": _encode(large, quality=80, progressive=True),
    }


def segments(data: bytes) -> list[Segment]:
    """The marker segments of a well-formed JPEG, with each SOS's entropy-coded data."""
    out, pos = [Segment(0xD8, 0, 2)], 2
    while pos + 2 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xD9:
            out.append(Segment(marker, pos, pos + 2))
            break
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker != 0xDA:
            out.append(Segment(marker, pos, end))
            pos = end
            continue
        scan = end
        while scan + 1 < len(data) and not (
            data[scan] == 0xFF and data[scan + 1] not in (0x00, *range(0xD0, 0xD8))
        ):
            scan += 1
        out.append(Segment(marker, pos, scan, scan_start=end))
        pos = scan
    return out


def _with(data: bytes, at: int, new: bytes, length: int | None = None) -> bytes:
    return data[:at] + new + data[at + (len(new) if length is None else length) :]


def variants(name: str, data: bytes, rng: random.Random) -> Iterator[tuple[str, bytes]]:
    segs = segments(data)
    header_end = next(s.scan_start for s in segs if s.scan_start is not None)
    scans = [(s.scan_start, s.end) for s in segs if s.scan_start is not None and s.end > s.scan_start]

    def in_scans() -> int:
        lo, hi = rng.choice(scans)
        return rng.randrange(lo, hi)

    for at in sorted(
        {*range(0, header_end, max(1, header_end // 60)), *range(0, len(data), max(1, len(data) // 120))}
    ):
        yield f"{name}/truncated@{at}", data[:at]
    for i in range(330):
        at = rng.randrange(2, header_end) if i % 2 else in_scans()
        yield f"{name}/bitflip@{at}", _with(data, at, bytes([data[at] ^ (1 << rng.randrange(8))]))
    for _ in range(60):
        at = rng.randrange(2, len(data))
        value = rng.choice((0x00, 0xFF))
        yield f"{name}/byte{value:02x}@{at}", _with(data, at, bytes([value]))
    for _ in range(30):
        at = rng.randrange(2, len(data) - 8)
        yield f"{name}/garbage@{at}", _with(data, at, rng.randbytes(8))
    for marker in _INSERTED_MARKERS:
        for _ in range(5):
            at = in_scans()
            yield f"{name}/marker{marker:02x}@{at}", _with(data, at, bytes([0xFF, marker]), 0)
    for s in segs[1:]:
        yield f"{name}/without-{s.marker:02x}@{s.start}", data[: s.start] + data[s.end :]
        if s.marker not in _STANDALONE:
            length = int.from_bytes(data[s.start + 2 : s.start + 4], "big")
            for bad in (length - 1, length + 1, 0, 0xFFFF):
                yield (
                    f"{name}/length-{s.marker:02x}@{s.start}={bad}",
                    _with(data, s.start + 2, bad.to_bytes(2, "big")),
                )
    body = data[:-2] if data.endswith(b"\xff\xd9") else data
    yield f"{name}/no-eoi", body
    yield f"{name}/double-eoi", body + b"\xff\xd9\xff\xd9"
    yield f"{name}/eoi-replaced", body + b"\xff\xd8"
    yield f"{name}/trailing-garbage", data + rng.randbytes(64)


def corpus(seed: int = 20261206) -> Iterator[tuple[str, bytes]]:
    rng = random.Random(seed)
    for name, data in bases().items():
        yield name, data
        yield from variants(name, data, rng)
