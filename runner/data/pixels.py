"""Pixels from a decoded image: what training on image files and `runner predict` share.

Every bit depth to 8 bits by its range (`eight_bit`), grey or colour to the model's channels,
transparency flattened onto white, framed in H x W as the training data were (the whole picture
fitted, or the ink in MNIST's digit box: FRAMINGS), keeping the aspect ratio (padded with the
border's colour). Both sides go through `to_pixels`, so a model is fed an image file the way it was trained on one,
to the last bit. Pillow is deterministic here, so a resumed run decodes the same bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from runner.errors import UserError

if TYPE_CHECKING:
    from PIL import Image


# How a picture is framed in the model's H x W, as the training data framed theirs (recorded in
# the run's Preprocessing.framing):
#   "fit"    the whole picture, scaled to fit keeping its aspect ratio (image files of the user's own
#            are framed so in training; CIFAR, Fashion-MNIST's objects fill their frame)
#   "mnist"  the ink alone (what differs from the border's colour), scaled to fit a box of 20/28 of
#            the size and centred on it, as MNIST frames its digits (and `digits` frames its own)
FRAMINGS = ("fit", "mnist")
MNIST_BOX = 20 / 28
INK = 48  # how far (0..255) a pixel's value is from the background's to count as ink


def to_pixels(
    image: Image.Image, shape: tuple[int, int, int], invert: str, light_on_dark: bool, framing: str = "fit"
) -> tuple[torch.Tensor, bool]:
    """An image as the model's input: uint8 (C, H, W), and whether it was inverted.

    Grey or colour to the model's channels; framed in its H x W as `framing` says (FRAMINGS),
    keeping the aspect ratio, padded with the border's colour. An image already of the model's
    size is taken as it is, framed already (an MNIST sample saved as a file). `invert` "auto"
    inverts a light-ground image (a scan or photo of dark ink on paper) for a model trained on
    light-on-dark images (MNIST and the like); "yes" and "no" decide regardless.
    """
    from PIL import ImageOps

    channels, height, width = shape
    if channels not in (1, 3):
        raise UserError(f"predict: images for a model of {channels} input channels are not supported (1 or 3)")
    if framing not in FRAMINGS:
        raise UserError(f"framing {framing!r} is not one of {', '.join(FRAMINGS)}; the run's metadata is not runner's")
    image = _flatten_alpha(eight_bit(image)).convert("L" if channels == 1 else "RGB")
    border = _border(image)
    inverted = invert == "yes" or (invert == "auto" and light_on_dark and bool(border.mean() > 127.5))
    background = tuple(int(round(v)) for v in border.mean(axis=0))
    if framing == "mnist" and image.size != (width, height):
        image = _fit(_ink(image, border.mean(axis=0)), (width, height), background, MNIST_BOX)
    else:
        image = _fit(image, (width, height), background)
    if inverted:
        image = ImageOps.invert(image)
    array = np.asarray(image, dtype=np.uint8).reshape(height, width, channels)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous(), inverted


def _ink(image: Image.Image, background: np.ndarray) -> Image.Image:
    """The image cropped to the bounding box of its ink (pixels INK or more from `background` in
    some channel); the whole image if it has none (a blank page)."""
    a = np.asarray(image, dtype=np.float64).reshape(image.height, image.width, -1)
    rows, cols = np.nonzero((np.abs(a - background) >= INK).any(axis=2))
    if not len(rows):
        return image
    return image.crop((int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1))


def eight_bit(image: Image.Image) -> Image.Image:
    """An image of more than 8 bits per sample as 8 bits, scaled by its range: 16-bit grey
    ("I;16", "I;16B", ... as 16-bit PNG, TIFF and PGM give) as round(v / 257), so 257 x v is v;
    32-bit integer ("I") the same when a value exceeds 255, as is (clipped at 0) otherwise, an
    8-bit image widened; floats ("F") as 0..1 when none exceeds 1, as 0..255 otherwise (clipped
    to that range, not-a-number as 0). Other modes are returned as they are: Pillow's own
    conversions of 1, L, P, LA, RGB(A), CMYK, YCbCr are right. Pillow's convert("L") clips
    16-bit grey at 255 instead of scaling it (Pillow #3011): a 16-bit scan became white.
    A 16-bit grey image's transparent value (PNG tRNS) becomes an alpha channel ("LA")."""
    from PIL import Image

    if not (image.mode.startswith("I") or image.mode == "F"):
        return image
    values = np.asarray(image)
    if image.mode == "F":
        values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
        grey = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    else:
        values = values.astype(np.int64)
        wide = image.mode.startswith("I;16") or (values.size and values.max() > 255)
        values = np.clip(values, 0, 65535 if wide else 255)
        grey = ((values + 128) // 257 if wide else values).astype(np.uint8)
    out = Image.fromarray(grey)  # uint8 (H, W): "L"
    transparent = image.info.get("transparency")
    if isinstance(transparent, int) and image.mode != "F":
        alpha = np.where(np.asarray(image).astype(np.int64) == transparent, 0, 255).astype(np.uint8)
        out = Image.merge("LA", (out, Image.fromarray(alpha)))
    return out


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Transparent pixels become white, as viewers show them (drawing apps export ink on transparency)."""
    from PIL import Image

    if image.mode not in ("RGBA", "LA", "PA") and not (image.mode == "P" and "transparency" in image.info):
        return image
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _border(image: Image.Image) -> np.ndarray:
    """The outermost ring of pixels, (n, channels): the image's background, as a rule."""
    a = np.asarray(image, dtype=np.float64).reshape(image.height, image.width, -1)
    return np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]])


def _fit(image: Image.Image, size: tuple[int, int], background: tuple[int, ...], box: float = 1.0) -> Image.Image:
    """`image` scaled to fit `box` of `size` (W, H) keeping its aspect ratio, centred on a canvas
    of `size` in the background's colour."""
    from PIL import Image

    if image.size == size and box == 1.0:
        return image  # untouched: an image already the model's size gives exactly its pixels
    scale = min(size[0] * box / image.width, size[1] * box / image.height)
    inner = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    canvas = Image.new(image.mode, size, background if len(background) > 1 else background[0])
    canvas.paste(image.resize(inner, Image.Resampling.LANCZOS), ((size[0] - inner[0]) // 2, (size[1] - inner[1]) // 2))
    return canvas
