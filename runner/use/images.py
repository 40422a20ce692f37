"""Image files as a model's input: any size, colour or grey, light or dark ground.

What `runner predict` feeds a trained model: decoded with Pillow, turned upright,
transparency flattened, converted to the model's channels, fitted into its input
size, and inverted when the model learnt light strokes on a dark ground (MNIST and
the like) but the image is dark ink on paper.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
import torch

from runner import storage
from runner.errors import UserError

if TYPE_CHECKING:
    from PIL import Image


class TooLarge(UserError):
    """An image with more pixels than allowed (a decompression bomb, or just too big)."""


def read_image(url: str) -> Image.Image:
    """An image file (a path or URL), upright (as its EXIF orientation says), or a UserError."""
    try:
        data = storage.read_bytes(url)
    except FileNotFoundError:
        raise UserError(f"{url}: no such file; give image files (PNG, JPEG) to classify") from None
    except IsADirectoryError:
        raise UserError(f"{url}: a directory, not an image file") from None
    except OSError as e:
        raise UserError(f"{url}: cannot read it ({e})") from None
    return decode_image(data, url)


def decode_image(data: bytes, name: str, max_pixels: int | None = None) -> Image.Image:
    """Encoded image bytes (PNG, JPEG, ...) decoded and upright, or a UserError naming `name`.

    `max_pixels` refuses an image whose header declares more pixels (width x height) before
    any is decoded: a small file can declare a huge image (a decompression bomb). Without it,
    Pillow's own limit (about 179 million pixels) applies.
    """
    from PIL import Image, ImageOps

    if not data:
        raise UserError(f"{name}: empty; give an image file (PNG, JPEG)")
    try:
        image = Image.open(io.BytesIO(data))
        if max_pixels is not None and image.width * image.height > max_pixels:
            raise TooLarge(
                f"{name}: {image.width}x{image.height} pixels, more than the {max_pixels:,} allowed; send a smaller image"
            )
        image.load()
        return ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as e:
        raise TooLarge(f"{name}: cannot use it: {e}") from None
    except (UserError, MemoryError):
        raise
    except Exception as e:
        # UnidentifiedImageError is an OSError; a truncated or malformed file raises OSError,
        # ValueError, SyntaxError, and from some of Pillow's decoders EOFError, struct.error,
        # IndexError...: whatever it is, the file is unusable, not runner broken.
        reason = "not an image (PNG, JPEG, ...)" if isinstance(e, Image.UnidentifiedImageError) else str(e)
        raise UserError(f"{name}: cannot use it: {reason}") from None


def to_pixels(
    image: Image.Image, shape: tuple[int, int, int], invert: str, light_on_dark: bool
) -> tuple[torch.Tensor, bool]:
    """An image as the model's input: uint8 (C, H, W), and whether it was inverted.

    Grey or colour to the model's channels; scaled to fit its H x W keeping the aspect
    ratio, padded with the border's colour. `invert` "auto" inverts a light-ground image
    (a scan or photo of dark ink on paper) for a model trained on light-on-dark images
    (MNIST and the like); "yes" and "no" decide regardless.
    """
    from PIL import ImageOps

    channels, height, width = shape
    if channels not in (1, 3):
        raise UserError(f"predict: images for a model of {channels} input channels are not supported (1 or 3)")
    image = _flatten_alpha(image).convert("L" if channels == 1 else "RGB")
    border = _border(image)
    inverted = invert == "yes" or (invert == "auto" and light_on_dark and bool(border.mean() > 127.5))
    image = _fit(image, (width, height), tuple(int(round(v)) for v in border.mean(axis=0)))
    if inverted:
        image = ImageOps.invert(image)
    array = np.asarray(image, dtype=np.uint8).reshape(height, width, channels)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous(), inverted


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


def _fit(image: Image.Image, size: tuple[int, int], background: tuple[int, ...]) -> Image.Image:
    from PIL import Image

    if image.size == size:
        return image  # untouched: an image already the model's size gives exactly its pixels
    scale = min(size[0] / image.width, size[1] / image.height)
    inner = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    canvas = Image.new(image.mode, size, background if len(background) > 1 else background[0])
    canvas.paste(image.resize(inner, Image.Resampling.LANCZOS), ((size[0] - inner[0]) // 2, (size[1] - inner[1]) // 2))
    return canvas
