"""Every image mode PIL opens decodes to the 8-bit RGB pixels it shows, upright (EXIF orientation applied)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from maf_pipeline.pipelines.features.encoders import decode_rgb


def _bytes(img: Image.Image, fmt: str = "PNG", **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def _pixels(data: bytes) -> np.ndarray:
    out = decode_rgb(data, 64)
    assert out.mode == "RGB"
    return np.asarray(out)


def test_16_bit_grayscale_png_keeps_its_levels():
    """The reported case: a 16-bit PNG averaging 201 came out all white (255)."""
    levels = np.array([[0, 51400, 65535], [257, 12850, 32896]], dtype=np.uint16)
    data = _bytes(Image.fromarray(levels))  # uint16: mode I;16
    gray = _pixels(data)[..., 0]
    np.testing.assert_array_equal(gray, [[0, 200, 255], [1, 50, 128]])
    assert _pixels(data)[..., 1].tolist() == gray.tolist()


def test_32_bit_integer_image_is_scaled_by_its_bit_depth():
    values = np.array([[0, 2**20 - 1], [2**19, 2**10]], dtype=np.int32)
    gray = _pixels(_bytes(Image.fromarray(values, mode="I"), "TIFF"))[..., 0]
    np.testing.assert_array_equal(gray, np.rint(values * 255.0 / (2**20 - 1)).astype(np.uint8))
    small = np.array([[0, 65535]], dtype=np.int32)  # 16-bit data in a 32-bit container
    np.testing.assert_array_equal(
        _pixels(_bytes(Image.fromarray(small, mode="I"), "TIFF"))[..., 0], [[0, 255]]
    )


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([[0.0, 0.5, 1.0]], [[0, 128, 255]]),  # [0, 1]
        ([[0.0, 100.0, 255.0]], [[0, 100, 255]]),  # [0, 255]
        ([[-1.0, 0.0, 1.0]], [[0, 128, 255]]),  # own range
    ],
)
def test_float_images(values, expected):
    img = Image.fromarray(np.array(values, dtype=np.float32), mode="F")
    np.testing.assert_array_equal(_pixels(_bytes(img, "TIFF"))[..., 0], expected)


def test_palette_with_a_transparent_index_is_white_there():
    img = Image.new("P", (2, 1))
    img.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    img.putdata([0, 1])
    data = _bytes(img, transparency=0)
    np.testing.assert_array_equal(_pixels(data), [[[255, 255, 255], [200, 100, 50]]])


@pytest.mark.parametrize("mode", ["LA", "PA"])
def test_gray_and_palette_with_alpha(mode):
    if mode == "LA":
        img = Image.fromarray(np.array([[[100, 0], [100, 255]]], dtype=np.uint8), mode="LA")
        data = _bytes(img)
        expected = [[[255, 255, 255], [100, 100, 100]]]
    else:
        img = Image.new("PA", (2, 1))
        img.putpalette([10, 20, 30] + [0] * 765)
        img.putdata([(0, 0), (0, 255)])
        data = _bytes(img.convert("RGBA"))  # PNG stores PA as RGBA; the decoded pixels are what matter
        expected = [[[255, 255, 255], [10, 20, 30]]]
    np.testing.assert_array_equal(_pixels(data), expected)


def test_cmyk():
    img = Image.new("CMYK", (2, 1))
    img.putdata([(0, 0, 0, 0), (255, 0, 0, 0)])
    np.testing.assert_array_equal(_pixels(_bytes(img, "TIFF")), [[[255, 255, 255], [0, 255, 255]]])


def test_exif_orientation_is_applied():
    """A 3x2 picture tagged orientation 6 (rotate 90 clockwise to view) enters upright: 2x3, corner moved."""
    pixels = np.zeros((2, 3, 3), dtype=np.uint8)
    pixels[0, 0] = (255, 0, 0)  # red top-left as stored
    img = Image.fromarray(pixels, mode="RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    out = _pixels(_bytes(img, "PNG", exif=exif))
    assert out.shape == (3, 2, 3)
    np.testing.assert_array_equal(out[0, 1], [255, 0, 0])  # top-left goes to top-right when turned 90 cw
    assert not out[0, 0].any()


@settings(max_examples=40, deadline=None)
@given(
    levels=st.lists(st.integers(0, 65535), min_size=1, max_size=24),
    as_float=st.booleans(),
)
def test_any_16_bit_or_unit_float_picture_decodes_to_its_scaled_levels(levels, as_float):
    """Property: every 16-bit level v decodes to round(v * 255 / 65535), every float level f in [0, 1] to
    round(255 f) (float pictures here are levels / 65535), on all three channels."""
    values = np.array(levels, dtype=np.uint16).reshape(1, -1)
    if as_float:
        img = Image.fromarray((values / 65535.0).astype(np.float32), mode="F")
        data = _bytes(img, "TIFF")
        expected = np.rint(values.astype(np.float32) / 65535.0 * np.float32(255.0))
    else:
        data = _bytes(Image.fromarray(values))
        expected = np.rint(values * (255.0 / 65535.0))
    out = _pixels(data)
    for channel in range(3):
        np.testing.assert_allclose(out[..., channel], expected, atol=1 if as_float else 0)
