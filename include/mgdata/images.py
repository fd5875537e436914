"""Validate downloaded training images by decoding them, and normalize mis-named ones.

Why decode: ``Image.open`` only parses the header, and ``Image.verify()`` only checks what a
format can check without decoding - for JPEG that is nothing at all, so a download cut off halfway
"verifies" fine and only fails later, inside a training data loader. ``Image.load()`` runs the real
decoder over the pixel data, which catches truncation and corruption (bad zlib streams, broken
Huffman data, ...) up front. For multi-frame files (animated GIF, MPO, multi-page TIFF) frame 0 is
what a data loader reads, so decoding frame 0 is enough. A JPEG (most of the corpus) is decoded at 1/8 scale, which
meets every corrupt byte a full decode meets for a fraction of its CPU (``_load_scaled`` says why, and a corruption
corpus in the tests proves the verdicts equal).

Downloads are also often not what their name says: a ``.jpg`` URL that serves a GIF, or an HTML
error page. ``check_image`` reports which, and re-encodes valid images whose content does not match
their extension, so the stored file is what its name promises.

Everything here is a pure function of its arguments - no module-level mutable state, no temp files,
no changes to Pillow's globals - because callers run ``check_image`` in a thread pool (Pillow
releases the GIL while decoding).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from io import BytesIO

from PIL import Image, UnidentifiedImageError

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "ImageCheck",
    "check_image",
    "misnamed",
    "to_jpeg",
]

# Formats stored as they are when the name promises them; any other format Pillow opens by default (the trainer's
# `Image.open` has no `formats=`) is re-encoded to what the name promises, so nothing the trainer could read is lost.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "MPO")

# Plugins that run an external program to decode (EPS and PostScript shell out to Ghostscript): never run on data
# from the internet, whatever Pillow's defaults allow; rejected with that reason.
EXTERNAL_PROGRAM_FORMATS: frozenset[str] = frozenset({"EPS"})

# Pillow's warning threshold; read once at import so later changes to the global cannot move it. Pillow itself raises
# (DecompressionBombError) only above twice this, so that is where an image stops being one the trainer opens.
DEFAULT_MAX_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485

# What each file extension promises. MPO is a JPEG with extra frames appended (phone cameras) and
# every JPEG reader opens it as one, so it satisfies a .jpg name.
_EXTENSION_FORMATS: dict[str, str] = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".jpe": "JPEG",
    ".jfif": "JPEG",
    ".mpo": "JPEG",
    ".png": "PNG",
    ".gif": "GIF",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
_FORMAT_ALIASES: dict[str, frozenset[str]] = {"JPEG": frozenset({"JPEG", "MPO"})}

# Leading bytes of the allowed formats, to tell "an image with a broken header" from "not an image".
# BMP's two-byte "BM" is left out: too many text files start with it.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)

_SNIFF_BYTES = 1024
_PRINTABLE = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D}
_TEXT_MIN_PRINTABLE_RATIO = 0.95

# Formats whose verdict a scaled decode gives (see _load_scaled): JPEG, and MPO, whose frame 0 is a JPEG.
_SCALED_DECODE_FORMATS = frozenset({"JPEG", "MPO"})
_DECODE_BLOCK = 1024 * 1024

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_HIGH_DEPTH_TARGETS = frozenset({"PNG", "TIFF"})  # can store 16-bit greyscale as is

# Load every Pillow plugin now, once, rather than lazily inside Image.open on the first calls,
# which would then race each other across the worker threads.
Image.init()

# What goes to Image.open: every format Pillow registers (as the trainer's Image.open does). MPO registers no opener of
# its own - the JPEG opener returns an MpoImageFile when it sees MP data.
_OPEN_FORMATS: tuple[str, ...] = tuple(Image.OPEN)

# Openers Pillow tries on every file, having no `accept` test, that cannot open a file whose first byte is 0xFF (as
# every JPEG's is), read at Pillow 13.0.0: IM's first header line must match `^[A-Za-z][^:]*:` (ImImagePlugin.py),
# IMT's must be lowercase words and a space or a form feed, and it still needs a size (ImtImagePlugin.py), IPTC's
# first field must start with 0x1C (IptcImagePlugin.py). Left out for such a file, in Pillow's order otherwise, they
# cost no failed parse (three per JPEG, about 0.1 ms) and the opener picked is the one the trainer's `Image.open`
# picks: tests/unit/test_jpeg_scaled_decode.py holds both to that on the corruption corpus.
_CANNOT_OPEN_0XFF = frozenset({"IM", "IMT", "IPTC"})
_OPEN_FORMATS_0XFF: tuple[str, ...] = tuple(f for f in _OPEN_FORMATS if f not in _CANNOT_OPEN_0XFF)


def _open_formats(data: bytes) -> tuple[str, ...]:
    return _OPEN_FORMATS_0XFF if data[:1] == b"\xff" else _OPEN_FORMATS


@dataclass(frozen=True)
class ImageCheck:
    """Outcome of ``check_image``."""

    status: str  # "ok" | "normalized" | "invalid"
    format: str | None  # Pillow format name of the ORIGINAL bytes; None if unidentified
    width: int | None
    height: int | None
    error: str | None  # reason when invalid; a short note when normalized, or ok above the warning threshold
    data: bytes  # bytes to store: the original for ok and invalid, the re-encoded bytes for normalized


def check_image(
    data: bytes,
    name: str,
    *,
    reencode_mismatched: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    full_decode: bool = False,
    decoding: Callable[[int], AbstractContextManager[object]] | None = None,
) -> ImageCheck:
    """Decode ``data`` and classify it; ``name`` is the target file name (for its extension).

    A JPEG stored as it is gets a scaled decode (``_load_scaled``): the same verdict as the trainer's full
    ``convert('RGB')`` at a fraction of the CPU. ``full_decode=True`` decodes every pixel at full size instead.
    ``decoding(pixels)``, when given, is entered around the decode (and any re-encode) with the header's width x
    height, once the header has been read and the size allowed: extract's pixel budget, which bounds the memory of
    decodes running at once without parsing each header a second time.

    Never raises: every failure is returned as ``status="invalid"`` with a reason starting with its
    category ("empty file", "not an image", "decompression bomb", "truncated image", "corrupt image").
    """
    if not data:
        return _invalid(data, "empty file")

    fmt: str | None = None
    width: int | None = None
    height: int | None = None
    try:
        with Image.open(BytesIO(data), formats=_open_formats(data)) as im:
            fmt = im.format
            width, height = im.size
            if fmt in EXTERNAL_PROGRAM_FORMATS:
                return _invalid(
                    data, f"unsafe format: {fmt} runs an external program to decode", fmt, width, height
                )
            # The header alone gives the size, so a bomb is rejected before a single byte is allocated for pixels:
            # above twice the warning threshold, where Pillow raises and the trainer could not open it either.
            if width * height > 2 * max_pixels:
                return _invalid(data, _bomb_reason(width, height, 2 * max_pixels), fmt, width, height)
            note = (
                f"{width}x{height} = {width * height} px, above Pillow's warning threshold {max_pixels} "
                "(opens with a DecompressionBombWarning)"
                if width * height > max_pixels
                else None
            )
            if fmt in _SCALED_DECODE_FORMATS:
                # The entropy-coded data in one piece (up to 1 MiB) rather than Pillow's 64 KiB: one decoder call
                # per photo instead of three, each of which gives up and takes back the GIL and copies the rest.
                im.decodermaxblock = max(im.decodermaxblock, min(len(data), _DECODE_BLOCK))
            target = _extension_format(name)
            stored_as_is = target is None or _format_matches(fmt, target) or not reencode_mismatched
            with decoding(width * height) if decoding else nullcontext():
                if stored_as_is and not full_decode and _load_scaled(im):
                    return ImageCheck("ok", fmt, width, height, note, data)
                im.load()
                width, height = im.size
                if stored_as_is:
                    return ImageCheck("ok", fmt, width, height, note, data)
                return _normalize(im, data, fmt, target, name)
    except UnidentifiedImageError:
        return _invalid(data, _describe_unidentified(data))
    # Pillow raises the error itself at twice its own limit; the warning only turns into an
    # exception under a caller's "error" warnings filter, and means the same thing.
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return _invalid(data, f"decompression bomb: {exc}", fmt, width, height)
    except Exception as exc:  # decoders raise a zoo of types on bad input; none may escape
        return _invalid(data, _describe_decode_error(exc), fmt, width, height)


def _load_scaled(im: Image.Image) -> bool:
    """Decode a JPEG at 1/8 scale (libjpeg's DCT scaling, through Pillow's ``draft``); False for anything else.

    Why the verdict is the full decode's: libjpeg still parses every marker and entropy-decodes every coefficient of
    every scan (progressive scans included), so truncated, cut-off or corrupt streams fail exactly as they do at full
    size; only the inverse DCT, upsampling and colour conversion run on fewer pixels. That is a claim proven, not
    assumed: tests/unit/test_jpeg_scaled_decode.py checks it on a corruption corpus of more than 10,000 variants
    (truncation, bit flips in every segment, bad and missing markers, every JPEG flavour Pillow writes). The size the
    caller records is the header's, which is the full decode's size for a JPEG.
    """
    if im.format not in _SCALED_DECODE_FORMATS:
        return False
    width, height = im.size
    if im.draft(im.mode, (max(1, width // 8), max(1, height // 8))) is None:
        return False  # more than one tile, or already configured: decode in full
    im.load()
    if im.mode != "RGB":  # what the trainer does after opening, on the scaled pixels (for RGB only a copy)
        im.convert("RGB")
    return True


def to_jpeg(data: bytes, *, quality: int = 95) -> bytes:
    """Re-encode the first frame of ``data`` as an RGB JPEG, compositing any alpha onto white.

    Unlike ``check_image`` this raises on bytes Pillow cannot open or decode; call it on bytes that
    ``check_image`` accepted.
    """
    with Image.open(BytesIO(data), formats=_open_formats(data)) as im:
        return _encode_jpeg(im, quality=quality)


# --- classification helpers ---------------------------------------------------------------------


def _invalid(
    data: bytes,
    reason: str,
    fmt: str | None = None,
    width: int | None = None,
    height: int | None = None,
) -> ImageCheck:
    return ImageCheck("invalid", fmt, width, height, reason, data)


def _bomb_reason(width: int, height: int, max_pixels: int) -> str:
    return f"decompression bomb: {width}x{height} = {width * height} px exceeds limit {max_pixels}"


def misnamed(name: str, fmt: str | None) -> str | None:
    """The format `name`'s extension promises when the bytes are another one (`fmt`), else None."""
    target = _extension_format(name)
    return target if fmt and target and not _format_matches(fmt, target) else None


def _extension_format(name: str) -> str | None:
    return _EXTENSION_FORMATS.get(os.path.splitext(name)[1].lower())


def _format_matches(fmt: str | None, target: str) -> bool:
    return fmt in _FORMAT_ALIASES.get(target, frozenset({target}))


def _describe_unidentified(data: bytes) -> str:
    magic_format = _magic_format(data)
    if magic_format is not None:
        # Starts like an image but Pillow could not parse the header: a broken file, not a web page.
        return f"corrupt image: {magic_format} signature but unreadable header"
    return f"not an image ({_sniff_non_image(data)})"


def _magic_format(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    return None


def _sniff_non_image(data: bytes) -> str:
    """Name what an unidentified download most likely is, for the invalid reason."""
    head = data[:_SNIFF_BYTES].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<!doctype") or b"<html" in head:
        return "HTML page"
    if head.startswith(b"<?xml"):
        # Object stores answer a missing or forbidden key with an XML error document.
        return "XML document"
    if head and sum(b in _PRINTABLE for b in head) / len(head) >= _TEXT_MIN_PRINTABLE_RATIO:
        return "text"
    return "unidentified format"


def _describe_decode_error(exc: Exception) -> str:
    message = str(exc) or "no message"
    # Pillow reports a short read as OSError("image file is truncated ...") or
    # OSError("Truncated File Read"); everything else is damaged data.
    if isinstance(exc, (OSError, EOFError)) and "truncated" in message.lower():
        return f"truncated image: {message}"
    return f"corrupt image: {type(exc).__name__}: {message}"


# --- re-encoding helpers ------------------------------------------------------------------------


def _normalize(im: Image.Image, data: bytes, fmt: str | None, target: str, name: str) -> ImageCheck:
    ext = os.path.splitext(name)[1].lower()
    width, height = im.size
    try:
        encoded = _reencode(im, target)
    except Exception as exc:  # the source decoded fine, so this is our encoder's limit, not corruption
        reason = f"cannot re-encode {fmt} content under {ext} name to {target}: {type(exc).__name__}: {exc}"
        return _invalid(data, reason, fmt, width, height)
    note = f"{fmt} content under {ext} name, re-encoded to {target}"
    return ImageCheck("normalized", fmt, width, height, note, encoded)


def _reencode(im: Image.Image, target: str) -> bytes:
    if target == "JPEG":
        return _encode_jpeg(im)
    if _is_high_depth(im) and target not in _HIGH_DEPTH_TARGETS:
        # GIF/BMP/WEBP writers would clip 16-bit values instead of scaling them (most pixels white).
        im = _to_8bit_color(im)
    buffer = BytesIO()
    try:
        im.save(buffer, format=target)
    except (OSError, ValueError, KeyError):
        # The target cannot store this mode (CMYK as PNG, 16-bit as WEBP, ...): fall back to 8-bit.
        buffer = BytesIO()
        _to_8bit_color(im).save(buffer, format=target)
    return buffer.getvalue()


def _encode_jpeg(im: Image.Image, *, quality: int = 95) -> bytes:
    rgb = _to_rgb(im)
    buffer = BytesIO()
    icc_profile = im.info.get("icc_profile")
    # Keep an RGB colour profile (e.g. Display P3) so colours survive; a CMYK or grey profile would
    # contradict the RGB pixels we write, so it is dropped.
    if isinstance(icc_profile, bytes) and icc_profile[16:20] == b"RGB ":
        rgb.save(buffer, format="JPEG", quality=quality, icc_profile=icc_profile)
    else:
        rgb.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _to_8bit_color(im: Image.Image) -> Image.Image:
    if _has_alpha(im):
        return im.convert("RGBA")
    return _to_rgb(im)


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB" and "transparency" not in im.info:
        return im
    if _is_high_depth(im):
        return _high_depth_to_l(im).convert("RGB")
    if _has_alpha(im):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in _ALPHA_MODES or "transparency" in im.info


def _is_high_depth(im: Image.Image) -> bool:
    return im.mode.startswith("I") or im.mode == "F"


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    """Scale 16/32-bit greyscale down to 8 bits; Pillow's own convert("L") clips instead of scaling,
    turning most 16-bit images white."""
    if im.mode.startswith("I;16"):
        im = im.convert("I")
        scale = 1 / 256
    else:
        high = float(im.getextrema()[1])  # type: ignore[arg-type]  # single band: (min, max)
        if high <= 255:
            scale = 1.0
        elif high <= 65535:
            scale = 1 / 256  # 16-bit data held in a 32-bit mode
        else:
            scale = 255 / high
    if scale != 1.0:
        im = im.point(lambda value: value * scale)
    return im.convert("L")
