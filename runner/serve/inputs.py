"""Request bodies as model input: what `POST /v1/predict` accepts, checked and bounded.

A body is one encoded image (PNG, JPEG, ... as image/* or application/octet-stream), a
multipart form of image files, or JSON: {"images": [base64, ...]} or {"pixels": [array,
...]} with each array at the model's input shape (C, H, W) (or (H, W) for one channel),
values 0..255. Encoded images take `runner predict`'s path (use/predict.prepare); pixel
arrays are the model's input as they are. Every refusal is a `BadInput` with the HTTP
status that names the fault: 400 unreadable, 413 too large, 415 unsupported type, 422
readable but wrong for this model. Pure functions of bytes, apart from Pillow and torch.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from dataclasses import dataclass
from typing import Any

import torch

from runner.errors import UserError
from runner.use import images
from runner.use.predict import prepare
from runner.use.trained import Trained

IMAGE_TYPES = ("image/", "application/octet-stream")


class BadInput(Exception):
    """A request the server refuses: `status` (4xx) and a one-line reason for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    """What one request may hold; they bound the memory a request can make the server use."""

    max_body_bytes: int = 4 * 1024 * 1024  # the encoded body
    max_pixels: int = 4096 * 4096  # per decoded image (width x height), checked before decoding
    max_images: int = 64  # per request


@dataclass(frozen=True)
class Item:
    """One image of a request: encoded bytes, or pixel values as sent."""

    name: str  # for messages: "image", "images[3]", "pixels[0]", a form file's name
    data: bytes | None = None
    pixels: Any = None  # nested lists of numbers


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def items_of(content_type: str, body: bytes, limits: Limits) -> list[Item]:
    """A non-multipart body's images. Multipart forms are parsed by the app (files_to_items)."""
    kind = media_type(content_type)
    if not body:
        raise BadInput(400, 'empty body; send an image (PNG, JPEG) or JSON {"images": [base64, ...]}')
    if kind.startswith(IMAGE_TYPES):
        return [Item("image", data=body)]
    if kind == "application/json":
        return _json_items(body, limits)
    raise BadInput(
        415,
        f"Content-Type {kind or '(none)'} is not supported; send image/png, image/jpeg, multipart/form-data "
        "or application/json",
    )


def files_to_items(files: list[tuple[str, bytes]], limits: Limits) -> list[Item]:
    """A multipart form's files, (name, content) each, as items."""
    if not files:
        raise BadInput(400, "multipart form without a file; upload the image as a file field")
    _check_count(len(files), limits)
    return [Item(name or f"file[{i}]", data=data) for i, (name, data) in enumerate(files)]


def _json_items(body: bytes, limits: Limits) -> list[Item]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadInput(400, f"body is not valid JSON ({e})") from None
    keys = set(doc) & {"images", "pixels"} if isinstance(doc, dict) else set()
    if len(keys) != 1:
        raise BadInput(422, 'JSON body must be an object with one of "images" (base64 strings) or "pixels" (arrays)')
    key = keys.pop()
    values = doc[key]
    if not isinstance(values, list) or not values:
        raise BadInput(422, f'"{key}" must be a non-empty list')
    _check_count(len(values), limits)
    if key == "pixels":
        return [Item(f"pixels[{i}]", pixels=v) for i, v in enumerate(values)]
    return [Item(f"images[{i}]", data=_base64(v, f"images[{i}]")) for i, v in enumerate(values)]


def _check_count(n: int, limits: Limits) -> None:
    if n > limits.max_images:
        raise BadInput(413, f"{n} images in one request, more than {limits.max_images}; send them in several")


def _base64(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise BadInput(422, f"{name}: expected a base64 string, got {type(value).__name__}")
    if value.startswith("data:") and "," in value:  # a data URL, as a canvas's toDataURL gives
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadInput(400, f"{name}: not base64 ({e})") from None


def cheap(items: list[Item], most_pixels: int = 1 << 18) -> bool:
    """Whether decoding `items` costs less than handing it to a worker thread does (a thread
    hop is a scheduler wake-up: milliseconds on a busy machine): encoded images declaring at
    most `most_pixels` in all (a header read, nothing decoded), and no pixel arrays."""
    from PIL import Image

    total = 0
    for item in items:
        if item.data is None:
            return False
        try:
            with Image.open(io.BytesIO(item.data)) as image:
                total += image.width * image.height
        except Exception:  # noqa: BLE001 - not an image: decoding it fails at once, cheaply
            continue
        if total > most_pixels:
            return False
    return True


def to_input(trained: Trained, items: list[Item], invert: str, limits: Limits) -> tuple[torch.Tensor, list[bool]]:
    """The items as one float32 batch (N, C, H, W) on the 0..255 scale, and which were inverted.
    Blocking (decoding, resizing): run it off the event loop."""
    prepared = [_one(trained, item, invert, limits) for item in items]
    return torch.stack([p.float() for p, _ in prepared]), [inverted for _, inverted in prepared]


def _one(trained: Trained, item: Item, invert: str, limits: Limits) -> tuple[torch.Tensor, bool]:
    if item.data is None:
        return _pixels(item, trained.input_shape), False
    try:
        image = images.decode_image(item.data, item.name, limits.max_pixels)
    except images.TooLarge as e:
        raise BadInput(413, str(e)) from None
    except UserError as e:
        raise BadInput(400, str(e)) from None
    try:
        return prepare(trained, image, invert)
    except UserError as e:  # a model whose channels no image maps to
        raise BadInput(422, str(e)) from None


def _pixels(item: Item, shape: tuple[int, int, int]) -> torch.Tensor:
    """Nested lists at the model's input shape, (C, H, W) or for one channel (H, W), values 0..255."""
    expected = "x".join(map(str, shape)) + (f" (or {shape[1]}x{shape[2]})" if shape[0] == 1 else "")
    try:
        values = torch.tensor(item.pixels, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise BadInput(422, f"{item.name}: not a rectangular array of numbers; expected {expected} values") from None
    if values.dim() == 2 and shape[0] == 1:
        values = values.unsqueeze(0)
    if tuple(values.shape) != tuple(shape):
        got = "x".join(map(str, values.shape)) or "a single number"
        raise BadInput(422, f"{item.name}: shape {got}, but the model takes {expected}")
    if not bool(torch.isfinite(values).all()) or values.min() < 0 or values.max() > 255:
        low, high = float(values.nan_to_num(math.nan).min()), float(values.max())
        raise BadInput(422, f"{item.name}: values must be finite, 0..255 (got {low:g}..{high:g})")
    return values
