"""Tests for mgdata.images: every image is generated here with Pillow, no fixture files."""

from __future__ import annotations

import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO

import pytest
from PIL import Image, ImageFile

from mgdata.images import DEFAULT_MAX_PIXELS, ImageCheck, check_image, to_jpeg

SIZE = (120, 80)

# --- builders -----------------------------------------------------------------------------------


def _noise_rgb(size: tuple[int, int] = SIZE) -> Image.Image:
    # Noise, not a flat colour: a flat image compresses to a handful of bytes, so cutting or
    # flipping "half the file" would barely touch pixel data.
    bands = [Image.effect_noise(size, 80 + 10 * i) for i in range(3)]
    return Image.merge("RGB", bands)


def _encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = BytesIO()
    im.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _jpeg() -> bytes:
    return _encode(_noise_rgb(), "JPEG", quality=90)


def _png() -> bytes:
    return _encode(_noise_rgb(), "PNG")


def _gif() -> bytes:
    return _encode(_noise_rgb(), "GIF")


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_header_only_bomb(width: int, height: int) -> bytes:
    """A structurally valid PNG whose IHDR claims width x height RGB but whose IDAT holds one byte."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00"))
        + _png_chunk(b"IEND", b"")
    )


def _corrupt_idat(png: bytes) -> bytes:
    """Flip bytes in the middle of the first IDAT chunk, fixing its CRC so only the decoder can tell."""
    start = png.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", png[start : start + 4])
    body = bytearray(png[start + 8 : start + 8 + length])
    for i in range(length // 4, length // 2):
        body[i] ^= 0xFF
    fixed = _png_chunk(b"IDAT", bytes(body))
    return png[:start] + fixed + png[start + 12 + length :]


def _decode(data: bytes) -> Image.Image:
    im = Image.open(BytesIO(data))
    im.load()
    return im


def _assert_ok(result: ImageCheck, data: bytes, fmt: str, size: tuple[int, int] = SIZE) -> None:
    assert result.status == "ok", result.error
    assert result.format == fmt
    assert (result.width, result.height) == size
    assert result.error is None
    assert result.data is data  # stored untouched, not re-encoded


# --- valid images -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "name", "fmt"),
    [(_jpeg, "a.jpg", "JPEG"), (_jpeg, "a.JPEG", "JPEG"), (_png, "a.png", "PNG"), (_gif, "a.gif", "GIF")],
)
def test_valid_image_is_ok(build, name: str, fmt: str) -> None:
    data = build()
    _assert_ok(check_image(data, name), data, fmt)


def test_cmyk_jpeg_is_ok() -> None:
    data = _encode(_noise_rgb().convert("CMYK"), "JPEG")
    assert Image.open(BytesIO(data)).mode == "CMYK"
    _assert_ok(check_image(data, "cmyk.jpg"), data, "JPEG")


def test_16bit_png_is_ok() -> None:
    deep = Image.linear_gradient("L").resize(SIZE).convert("I").point(lambda v: v * 256).convert("I;16")
    data = _encode(deep, "PNG")
    assert Image.open(BytesIO(data)).mode == "I;16"
    _assert_ok(check_image(data, "deep.png"), data, "PNG")


def test_palette_png_with_transparency_is_ok() -> None:
    im = _noise_rgb().convert("P")
    data = _encode(im, "PNG", transparency=0)
    assert "transparency" in Image.open(BytesIO(data)).info
    _assert_ok(check_image(data, "pal.png"), data, "PNG")


def test_grayscale_jpeg_is_ok() -> None:
    data = _encode(_noise_rgb().convert("L"), "JPEG")
    _assert_ok(check_image(data, "gray.jpg"), data, "JPEG")


def test_animated_gif_is_ok() -> None:
    frames = [_noise_rgb().convert("P") for _ in range(3)]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(BytesIO(data)).n_frames == 3
    _assert_ok(check_image(data, "anim.gif"), data, "GIF")


def test_mpo_counts_as_jpeg() -> None:
    data = _encode(_noise_rgb(), "MPO", save_all=True, append_images=[_noise_rgb()])
    _assert_ok(check_image(data, "stereo.jpg"), data, "MPO")


def test_unknown_extension_is_kept_as_is() -> None:
    data = _gif()
    _assert_ok(check_image(data, "image.bin"), data, "GIF")


# --- broken images ------------------------------------------------------------------------------


def test_truncated_jpeg_is_invalid() -> None:
    data = _jpeg()
    cut = data[: len(data) // 2]
    # The header survives the cut, so only a full decode can notice.
    assert Image.open(BytesIO(cut)).size == SIZE
    result = check_image(cut, "cut.jpg")
    assert result.status == "invalid"
    assert result.error is not None and result.error.startswith("truncated image")
    assert (result.format, result.width, result.height) == ("JPEG", *SIZE)
    assert result.data is cut


def test_corrupt_png_is_invalid() -> None:
    original = _png()
    data = _corrupt_idat(original)
    assert data[:33] == original[:33]  # signature and IHDR intact
    assert Image.open(BytesIO(data)).size == SIZE
    result = check_image(data, "bad.png")
    assert result.status == "invalid"
    assert result.error is not None and result.error.startswith("corrupt image")
    assert result.format == "PNG"
    assert result.data is data


def test_image_signature_with_broken_header_is_corrupt_not_unidentified() -> None:
    result = check_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "stub.png")
    assert result.status == "invalid"
    assert result.error == "corrupt image: PNG signature but unreadable header"


def test_file_cut_inside_header_is_truncated() -> None:
    result = check_image(_png()[:20], "stub.png")
    assert result.status == "invalid"
    assert result.error is not None and result.error.startswith("truncated image")


@pytest.mark.parametrize("build", [_jpeg, _png, _gif])
def test_never_raises_on_damaged_bytes(build) -> None:
    data = build()
    for cut in range(1, len(data), max(1, len(data) // 40)):
        damaged = [data[:cut], data[:cut] + b"\x00" * 64, data[:cut] + bytes(b ^ 0x5A for b in data[cut:])]
        for sample in damaged:
            result = check_image(sample, "x" + (".jpg" if build is _jpeg else ".png"))
            assert result.status in {"ok", "invalid", "normalized"}
            if result.status == "invalid":
                assert result.error
                assert result.data is sample


# --- not images ---------------------------------------------------------------------------------


def test_zero_bytes_is_empty_file() -> None:
    result = check_image(b"", "empty.jpg")
    assert result == ImageCheck("invalid", None, None, None, "empty file", b"")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>", "not an image (HTML page)"),
        (b"\xef\xbb\xbf  <html lang='en'><head></head></html>", "not an image (HTML page)"),
        (b'<?xml version="1.0"?><Error><Code>AccessDenied</Code></Error>', "not an image (XML document)"),
        (b"Access denied. Please contact the site administrator.\n", "not an image (text)"),
        (bytes(range(256)) * 4, "not an image (unidentified format)"),
    ],
)
def test_non_image_bytes_are_named(data: bytes, expected: str) -> None:
    result = check_image(data, "photo.jpg")
    assert (result.status, result.format, result.error) == ("invalid", None, expected)
    assert result.data is data


# --- decompression bombs ------------------------------------------------------------------------


def test_bomb_over_caller_limit_is_invalid() -> None:
    data = _encode(_noise_rgb((100, 100)), "PNG")
    result = check_image(data, "big.png", max_pixels=1000)
    assert result.status == "invalid"
    # Pillow (and so the trainer) raises only above twice the limit: that is where an image is a bomb
    assert result.error == "decompression bomb: 100x100 = 10000 px exceeds limit 2000"
    assert (result.width, result.height) == (100, 100)


def test_above_the_warning_threshold_the_trainer_still_opens_it_so_it_is_kept_with_a_note() -> None:
    data = _encode(_noise_rgb((40, 40)), "PNG")  # 1600 px: above a 1000 px warning threshold, below 2000
    result = check_image(data, "big.png", max_pixels=1000)
    assert (result.status, result.data) == ("ok", data)
    assert (
        result.error
        == "40x40 = 1600 px, above Pillow's warning threshold 1000 (opens with a DecompressionBombWarning)"
    )


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_header_only_png_bomb_is_invalid() -> None:
    data = _png_header_only_bomb(30_000, 30_000)  # above twice Pillow's limit: Pillow raises before decoding
    assert len(data) < 100
    result = check_image(data, "bomb.png")
    assert result.status == "invalid"
    assert result.error is not None and result.error.startswith("decompression bomb")


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_bomb_warning_raised_as_error_is_still_a_bomb() -> None:
    result = check_image(_png_header_only_bomb(10_000, 10_000), "bomb.png")
    assert result.status == "invalid"
    assert result.error is not None and result.error.startswith("decompression bomb")


def test_pillow_globals_untouched() -> None:
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    check_image(_jpeg()[:500], "cut.jpg")
    check_image(_encode(_noise_rgb((100, 100)), "PNG"), "big.png", max_pixels=1000)
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before == (DEFAULT_MAX_PIXELS, False)


# --- extension mismatch -------------------------------------------------------------------------


def test_gif_named_jpg_is_normalized_to_jpeg() -> None:
    data = _gif()
    result = check_image(data, "photo.jpg")
    assert result.status == "normalized"
    assert result.format == "GIF"
    assert (result.width, result.height) == SIZE
    assert result.error == "GIF content under .jpg name, re-encoded to JPEG"
    out = _decode(result.data)
    assert (out.format, out.mode, out.size) == ("JPEG", "RGB", SIZE)


def test_gif_named_jpg_without_reencode_is_ok_gif() -> None:
    data = _gif()
    _assert_ok(check_image(data, "photo.jpg", reencode_mismatched=False), data, "GIF")


def test_jpeg_named_png_is_normalized_to_png() -> None:
    result = check_image(_jpeg(), "photo.png")
    assert result.status == "normalized"
    assert result.format == "JPEG"
    out = _decode(result.data)
    assert (out.format, out.size) == ("PNG", SIZE)


def test_cmyk_jpeg_named_png_falls_back_to_rgb() -> None:
    result = check_image(_encode(_noise_rgb().convert("CMYK"), "JPEG"), "photo.png")
    assert result.status == "normalized"
    assert _decode(result.data).mode == "RGB"


# --- to_jpeg ------------------------------------------------------------------------------------


def test_to_jpeg_composites_alpha_on_white() -> None:
    rgba = Image.new("RGBA", SIZE, (255, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 60, 80))  # left half fully transparent black
    out = _decode(to_jpeg(_encode(rgba, "PNG")))
    assert (out.format, out.mode, out.size) == ("JPEG", "RGB", SIZE)
    assert all(c > 240 for c in out.getpixel((10, 40)))  # transparent -> white, not black
    red, green, blue = out.getpixel((110, 40))
    assert red > 200 and green < 40 and blue < 40


def test_to_jpeg_takes_first_frame_of_animated_gif() -> None:
    frames = [Image.new("RGB", SIZE, colour).convert("P") for colour in ("blue", "red", "green")]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    red, green, blue = _decode(to_jpeg(data)).getpixel((60, 40))
    assert blue > 200 and red < 40 and green < 40


def test_to_jpeg_scales_16bit_instead_of_clipping() -> None:
    data = _encode(Image.new("I;16", SIZE, 32768), "PNG")
    value = _decode(to_jpeg(data)).getpixel((5, 5))
    assert all(120 <= c <= 136 for c in value)  # Pillow's plain convert("L") would give 255


# --- concurrency --------------------------------------------------------------------------------


def test_concurrent_checks_match_serial() -> None:
    inputs = [(_jpeg(), "a.jpg"), (_gif(), "b.jpg"), (_jpeg()[:700], "c.jpg"), (b"<html>", "d.jpg")] * 8
    serial = [check_image(data, name) for data, name in inputs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        threaded = list(pool.map(lambda item: check_image(*item), inputs))
    assert [(r.status, r.format, r.error) for r in threaded] == [
        (r.status, r.format, r.error) for r in serial
    ]


# --- formats Pillow opens by default ------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "name", "target"), [("TGA", "a.jpg", "JPEG"), ("PPM", "b.png", "PNG"), ("ICO", "c.JPG", "JPEG")]
)
def test_a_format_the_trainer_opens_is_kept_reencoded_to_what_the_name_promises(fmt, name, target) -> None:
    data = _encode(_noise_rgb((32, 32)), fmt)
    result = check_image(data, name)
    assert (result.status, result.format) == ("normalized", fmt), result.error
    ext = name.rsplit(".", 1)[1].lower()
    assert result.error == f"{fmt} content under .{ext} name, re-encoded to {target}"
    with Image.open(BytesIO(result.data)) as im:
        assert im.format == target and im.size == (32, 32)


@pytest.mark.parametrize("name", ["x.jfif", "x.JPE", "x.mpo"])
def test_jpeg_family_names_promise_jpeg(name) -> None:
    assert check_image(_jpeg(), name).status == "ok"
    assert check_image(_encode(_noise_rgb((8, 8)), "PNG"), name).status == "normalized"


def test_eps_is_rejected_because_it_runs_an_external_program() -> None:
    buffer = BytesIO()
    _noise_rgb((16, 16)).save(buffer, "EPS")  # Pillow writes PostScript itself; reading it needs Ghostscript
    result = check_image(buffer.getvalue(), "doc.jpg")
    assert (result.status, result.format) == ("invalid", "EPS")
    assert result.error == "unsafe format: EPS runs an external program to decode"
