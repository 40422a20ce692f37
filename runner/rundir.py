"""The run directory's layout: what a run leaves behind, and where.

<checkpoint.dir>/
  spec.toml                 the resolved spec (defaults filled in, overrides applied)
  metrics.jsonl             one JSON object per finished epoch, then a final test record
  final/model.safetensors   the trained weights, with what is needed to use them as metadata
"""

from __future__ import annotations

import json
from typing import Any

from runner import storage

SPEC = "spec.toml"
METRICS = "metrics.jsonl"
FINAL_WEIGHTS = "final/model.safetensors"


class RunDir:
    def __init__(self, url: str):
        self.url = url

    def path(self, name: str) -> str:
        return storage.join(self.url, name)

    def write_spec(self, toml_text: str) -> None:
        storage.write_bytes(self.path(SPEC), toml_text.encode())

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        # Rewritten whole each time: object stores have no append, and the records are small.
        lines = "".join(json.dumps(r) + "\n" for r in records)
        storage.write_bytes(self.path(METRICS), lines.encode())

    def read_metrics(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in storage.read_bytes(self.path(METRICS)).decode().splitlines()]

    def write_final(self, weights: dict[str, Any], metadata: dict[str, str]) -> None:
        from safetensors.torch import save

        tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
        storage.write_bytes(self.path(FINAL_WEIGHTS), save(tensors, metadata=metadata))
