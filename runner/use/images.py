"""Image files as a model's input: any size, colour or grey, light or dark ground.

What `runner predict` feeds a trained model: decoded with Pillow, turned upright, every
bit depth scaled to 8 bits, transparency flattened, converted to the model's channels,
framed in its input size as the training data were (data/pixels.py), and inverted when the model learnt light strokes on a dark ground (MNIST and
the like) but the image is dark ink on paper.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from runner import storage
from runner.data.pixels import to_pixels
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


__all__ = ["read_image", "to_pixels"]
