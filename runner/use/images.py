"""Image files as a model's input: any size, colour or grey, light or dark ground.

What `runner predict` feeds a trained model: decoded with Pillow, turned upright,
transparency flattened, converted to the model's channels, fitted into its input
size, and inverted when the model learnt light strokes on a dark ground (MNIST and
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


def read_image(url: str) -> Image.Image:
    """An image file (a path or URL), upright (as its EXIF orientation says), or a UserError."""
    from PIL import Image, ImageOps

    try:
        data = storage.read_bytes(url)
    except FileNotFoundError:
        raise UserError(f"{url}: no such file; give image files (PNG, JPEG) to classify") from None
    except IsADirectoryError:
        raise UserError(f"{url}: a directory, not an image file") from None
    except OSError as e:
        raise UserError(f"{url}: cannot read it ({e})") from None
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, Image.DecompressionBombError) as e:  # UnidentifiedImageError is an OSError
        reason = "not an image (PNG, JPEG, ...)" if isinstance(e, Image.UnidentifiedImageError) else str(e)
        raise UserError(f"{url}: cannot use it: {reason}") from None
    return ImageOps.exif_transpose(image)


__all__ = ["read_image", "to_pixels"]
