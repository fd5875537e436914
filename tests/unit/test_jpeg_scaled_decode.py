"""A JPEG's scaled decode gives the trainer's verdict: on every variant of the corruption corpus
(`offline_mirror.jpeg_corpus`), `check_image` calls the bytes invalid exactly when MG-LLaVA's
`Image.open(path).convert('RGB')` raises, and gives the same reason category and size as a full-size decode."""

from __future__ import annotations

import warnings
from collections import Counter
from io import BytesIO

import pytest
from PIL import Image

from mgdata.images import _load_scaled, check_image
from offline_mirror.jpeg_corpus import bases, corpus


def trainer_opens(data: bytes) -> bool:
    """What the trainer's reader does with the file, with Pillow's defaults: True when it gets an RGB image."""
    try:
        with Image.open(BytesIO(data)) as im:
            im.convert("RGB")
    except Exception:
        return False
    return True


def outcome(data: bytes, **options) -> tuple:
    c = check_image(data, "image.jpg", **options)
    return c.status, (c.error or "").split(":")[0], c.format, c.width, c.height


@pytest.fixture(scope="module")
def verdicts() -> list[tuple[str, bool, tuple, tuple]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # corrupt EXIF segments warn; the verdicts are what is compared
        return [(name, trainer_opens(d), outcome(d), outcome(d, full_decode=True)) for name, d in corpus()]


def test_the_corpus_is_large_and_has_both_verdicts_for_every_base(verdicts):
    assert len(verdicts) >= 10_000
    per_base = Counter((name.split("/")[0], opens) for name, opens, _, _ in verdicts)
    for base in bases():
        assert per_base[base, True] > 0 and per_base[base, False] > 50, base


def test_the_scaled_decode_is_invalid_exactly_when_the_trainer_cannot_open_the_file(verdicts):
    differ = [(name, opens, cheap) for name, opens, cheap, _ in verdicts if (cheap[0] != "invalid") != opens]
    assert differ == []


def test_the_scaled_decode_gives_the_full_decodes_reason_format_and_size(verdicts):
    differ = [(name, cheap, full) for name, _, cheap, full in verdicts if cheap != full]
    assert differ == []


def test_an_intact_jpeg_is_decoded_scaled_and_keeps_its_full_size():
    data = bases()["large-progressive"]
    c = check_image(data, "photo.jpg")
    assert (c.status, c.format, c.width, c.height, c.data) == ("ok", "JPEG", 640, 480, data)


def test_a_jpeg_under_another_name_is_still_decoded_in_full_and_re_encoded():
    c = check_image(bases()["baseline-420"], "chart.png")
    assert c.status == "normalized" and c.data.startswith(b"\x89PNG")
    with Image.open(BytesIO(c.data)) as im:
        assert im.size == (96, 72)


def test_a_jpeg_is_decoded_at_one_eighth_of_its_size_and_a_png_is_not_scaled():
    with Image.open(BytesIO(bases()["large-baseline"])) as im:
        assert _load_scaled(im) and im.size == (80, 60)
    png = BytesIO()
    Image.new("RGB", (64, 64)).save(png, format="PNG")
    with Image.open(png) as im:
        assert not _load_scaled(im) and im.size == (64, 64)


def opened(data: bytes, formats=None) -> tuple:
    try:
        with Image.open(BytesIO(data), formats=formats) as im:
            return im.format, im.size, im.mode
    except Exception as e:  # what the trainer's Image.open would raise
        return (type(e).__name__,)


def test_pillow_opens_every_variant_as_the_trainers_image_open_does_without_the_openers_left_out():
    """`images._open_formats` leaves IM, IMT and IPTC out for a file starting 0xFF: the same opener wins (or the
    same error comes) on every variant of the corpus, and each of the three refuses every such variant."""
    from PIL import ImImagePlugin, ImtImagePlugin, IptcImagePlugin

    from mgdata.images import _CANNOT_OPEN_0XFF, _open_formats

    assert _CANNOT_OPEN_0XFF == {"IM", "IMT", "IPTC"}
    left_out = (ImImagePlugin.ImImageFile, ImtImagePlugin.ImtImageFile, IptcImagePlugin.IptcImageFile)
    differ, accepted, leading_ff = [], [], 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, data in corpus():
            if _open_formats(data) != tuple(Image.OPEN):
                leading_ff += 1
                for opener in left_out:
                    try:
                        opener(BytesIO(data)).close()
                        accepted.append((name, opener.format))
                    except SyntaxError:  # what Image.open takes as "not this format" and goes on
                        pass
            if opened(data) != opened(data, _open_formats(data)):
                differ.append(name)
    assert leading_ff > 10_000 and accepted == [] and differ == []
