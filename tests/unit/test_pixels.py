"""Image files to pixels (data/pixels.py, use/images.py): every bit depth decoded by its range,
and the pixel limit, on real files Pillow writes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from runner.data import pixels as pixels_
from runner.data.imagefolder import decode
from runner.data.pixels import to_pixels
from runner.errors import UserError
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


# -- framing: a user's picture framed as the training data were ---------------------------------


def ink_box(pixels: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the ink (value > 64) of light-on-dark pixels (1, H, W)."""
    rows, cols = np.nonzero(pixels[0].numpy() > 64)
    return int(rows.min()), int(cols.min()), int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def drawn_large() -> Image.Image:
    """A 7 drawn big and off-centre on a 280 x 280 white page (dark ink), as on the drawing page."""
    page = Image.new("L", (280, 280), 255)
    ink = Image.fromarray(255 - EIGHT).crop((6, 2, 28, 30)).resize((150, 265), Image.Resampling.BILINEAR)
    page.paste(ink, (125, 8))
    return page


def test_mnist_framing_puts_the_ink_in_a_centred_20_pixel_box_as_the_digits_data_are() -> None:
    fitted, inverted = to_pixels(drawn_large(), (1, 28, 28), "auto", True, "fit")
    framed, also = to_pixels(drawn_large(), (1, 28, 28), "auto", True, "mnist")
    assert inverted and also
    top, left, height, width = ink_box(framed)
    assert max(height, width) in (19, 20) and abs((top + height / 2) - 14) <= 1 and abs((left + width / 2) - 14) <= 1
    assert ink_box(fitted)[2] >= 25  # fitted whole, the ink ran from edge to edge: not what the model learnt
    from runner.data.datasets import DATASETS

    x = DATASETS["digits"].load("", False, 0, None).train.x  # type: ignore[arg-type]
    boxes = np.array([ink_box(d)[2:] for d in x[:200]])
    assert boxes.max() <= 20 and np.median(boxes.max(axis=1)) >= 17  # the data's digits: about a 20-pixel box


def test_mnist_framing_takes_an_image_of_the_models_size_as_framed_and_a_blank_one_whole() -> None:
    sample = EIGHT[2:30, 2:30].copy()  # 28 x 28: a sample of the data's own size
    pixels, _ = to_pixels(Image.fromarray(sample), (1, 28, 28), "no", True, "mnist")
    assert np.array_equal(pixels[0].numpy(), sample)
    blank, _ = to_pixels(Image.new("L", (50, 70), 255), (1, 28, 28), "auto", True, "mnist")
    assert int(blank.max()) == 0  # white paper, inverted: nothing to frame
    with pytest.raises(UserError, match="framing 'centre' is not one of fit, mnist"):
        to_pixels(Image.fromarray(sample), (1, 28, 28), "no", True, "centre")


def test_the_framing_is_recorded_in_the_runs_preprocessing_and_used_by_prepare() -> None:
    from types import SimpleNamespace

    from runner.data.datasets import DATASETS
    from runner.data.preprocessing import Preprocessing
    from runner.use.predict import prepare

    assert {name: info.framing for name, info in DATASETS.items()} == {
        "mnist": "mnist", "fashion-mnist": "fit", "cifar10": "fit", "digits": "mnist", "imagefolder": "fit"
    }  # fmt: skip
    digits = DATASETS["digits"].preprocessing
    assert Preprocessing.from_dict(digits.to_dict()) == digits and digits.framing == "mnist"
    assert Preprocessing.from_dict(digits.to_metadata()) == digits  # weights metadata: JSON strings
    old = {k: v for k, v in digits.to_metadata().items() if k != "framing"}  # weights from before framing
    assert Preprocessing.from_dict(old).framing == "fit"
    trained = SimpleNamespace(input_shape=(1, 28, 28), preprocessing=digits)
    pixels, inverted = prepare(trained, drawn_large())  # type: ignore[arg-type]
    assert inverted and torch.equal(pixels, to_pixels(drawn_large(), (1, 28, 28), "auto", True, "mnist")[0])
