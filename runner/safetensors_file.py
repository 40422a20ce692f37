"""safetensors files with the same bytes for the same weights and metadata.

safetensors' own `save` keeps the metadata in a Rust HashMap with a random seed per
map, so the header's key order, and with it the file's bytes, differ from one call to
the next even for equal tensors and metadata (safetensors #584; sorting the dict passed
in does not help). `sha256sum` of two bitwise-equal runs' weights then disagrees.

Every safetensors file runner writes goes through `dumps`: safetensors lays out the
tensors' data (its order is a function of the names and dtypes alone), then the header
is written again canonically: `__metadata__` first with its keys sorted, then the
tensor entries sorted by name, compact JSON, padded with spaces to a multiple of 8
bytes as safetensors pads it. The format is unchanged (an 8-byte little-endian header
length, the JSON header, the raw data; offsets are relative to the data's start), so
safetensors.torch.load/load_file/safe_open read it as before.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

METADATA = "__metadata__"
_ALIGN = 8  # safetensors pads the header so that the data starts at a multiple of 8


def dumps(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """`tensors` (moved to the CPU, made contiguous) and `metadata` (str -> str) as the bytes
    of a safetensors file: equal tensors and metadata, in any key order, give equal bytes."""
    from safetensors.torch import save

    cpu = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    return canonical(save(cpu, metadata=dict(metadata) if metadata else None))


def canonical(data: bytes) -> bytes:
    """The safetensors file `data` with its header written canonically (see the module's
    docstring); the tensors' bytes are kept as they are."""
    head, start = _split(data)
    meta = head.pop(METADATA, None)
    ordered: dict[str, Any] = {METADATA: dict(sorted(meta.items()))} if meta else {}
    ordered.update(sorted(head.items()))
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % _ALIGN)
    return len(text).to_bytes(8, "little") + text + data[start:]


def header(data: bytes) -> dict[str, Any]:
    """The JSON header of the safetensors file `data`: tensor entries and `__metadata__`."""
    return _split(data)[0]


def metadata(data: bytes) -> dict[str, str]:
    """The string pairs written with the weights (safetensors.torch.load drops them)."""
    return header(data).get(METADATA) or {}


def loads(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the metadata of the safetensors file `data`."""
    from safetensors.torch import load

    return load(data), metadata(data)


def _split(data: bytes) -> tuple[dict[str, Any], int]:
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size]), 8 + size
