"""Image files to pixels (data/pixels.py, use/images.py): every bit depth decoded by its range,
and the pixel limit, on real files Pillow writes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from runner.data.imagefolder import decode
from runner.data import pixels as pixels_
from runner.data.pixels import to_pixels
from runner.use import images


def seven() -> np.ndarray:
    """scikit-learn's first handwritten 7, 8x8 upscaled to 32x32, as uint8 0..255."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images[int(np.flatnonzero(digits.target == 7)[0])] * 15.9375).astype(np.uint8)
    return np.asarray(Image.fromarray(pixels).resize((32, 32), Image.Resampling.BILINEAR))


def encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


EIGHT = seven()
# The same picture at other depths: 16-bit as 257 x v (0..65535), 32-bit int, float 0..1 and 0..255.
DEPTHS = {
    "png I;16": (EIGHT.astype(np.uint16) * 257, "PNG", "I;16"),
    "tiff I;16": (EIGHT.astype(np.uint16) * 257, "TIFF", "I;16"),
    "tiff I;16B": ((EIGHT.astype(np.uint16) * 257).astype(">u2"), "TIFF", "I;16B"),
    "tiff I 16-bit values": (EIGHT.astype(np.int32) * 257, "TIFF", "I"),
    "tiff I 8-bit values": (EIGHT.astype(np.int32), "TIFF", "I"),
    "tiff F 0..1": (EIGHT.astype(np.float32) / 255, "TIFF", "F"),
    "tiff F 0..255": (EIGHT.astype(np.float32), "TIFF", "F"),
    "pgm 16-bit": (EIGHT.astype(np.uint16) * 257, "PPM", "I"),
}


@pytest.mark.parametrize("kind", DEPTHS)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_bit_depth_gives_the_pixels_of_the_8_bit_file(kind: str, channels: int) -> None:
    array, fmt, mode = DEPTHS[kind]
    deep = images.decode_image(encoded(array, fmt), kind)
    assert deep.mode == mode  # the file really is of that depth, as Pillow reads it
    shape = (channels, 28, 28)
    want, _ = to_pixels(images.decode_image(encoded(EIGHT, "PNG"), "8-bit"), shape, "auto", True)
    got, inverted = to_pixels(deep, shape, "auto", True)
    assert not inverted and torch.equal(got, want)
    assert np.array_equal(np.asarray(pixels_.eight_bit(deep)), EIGHT)


def test_an_image_folder_decodes_a_16_bit_png_as_its_8_bit_twin(tmp_path: Path) -> None:
    (tmp_path / "16.png").write_bytes(encoded(EIGHT.astype(np.uint16) * 257, "PNG"))
    (tmp_path / "8.png").write_bytes(encoded(EIGHT, "PNG"))
    deep, _, why = decode(str(tmp_path / "16.png"), (1, 28, 28))
    flat, _, _ = decode(str(tmp_path / "8.png"), (1, 28, 28))
    assert why == "" and deep is not None and flat is not None
    assert np.array_equal(deep, flat) and (deep > 127).mean() < 0.5  # not 70 % white, as convert("L") made it


def test_16_bit_scaling_rounds_to_the_nearest_8_bit_value() -> None:
    values = np.array([[0, 128, 129, 257, 65406, 65407, 65535]], dtype=np.uint16)
    assert np.asarray(pixels_.eight_bit(Image.fromarray(values))).tolist() == [[0, 0, 1, 1, 254, 255, 255]]
    floats = np.array([[np.nan, -1.0, 0.5, 300.0]], dtype=np.float32)  # over 1: the 0..255 scale, clipped
    assert np.asarray(pixels_.eight_bit(Image.fromarray(floats))).tolist() == [[0, 0, 0, 255]]


def test_a_16_bit_grey_pngs_transparent_value_is_flattened_onto_white() -> None:
    array = EIGHT.astype(np.uint16) * 257
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG", transparency=0)  # the dark ground transparent
    image = images.decode_image(buffer.getvalue(), "tRNS")
    assert image.mode == "I;16" and image.info["transparency"] == 0
    pixels, _ = to_pixels(image, (1, 32, 32), "no", False)
    assert torch.equal(pixels[0], torch.from_numpy(np.where(EIGHT == 0, 255, EIGHT)))


def complete_png(width: int, height: int) -> bytes:
    """A whole, valid 1-bit PNG of width x height (a few KB: blank rows compress well)."""
    buffer = io.BytesIO()
    Image.new("1", (width, height), 1).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_complete_png_over_the_pixel_limit_is_refused_before_decoding() -> None:
    data = complete_png(5000, 5000)
    assert len(data) < 64 * 1024
    assert images.decode_image(data, "big.png").size == (5000, 5000)  # whole: it decodes without the limit
    with pytest.raises(images.TooLarge) as e:
        images.decode_image(data, "big.png", max_pixels=4096 * 4096)
    assert str(e.value) == "big.png: 5000x5000 pixels, more than the 16,777,216 allowed; send a smaller image"
