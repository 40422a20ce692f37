"""The run directory's layout: what a run leaves behind, and where.

<checkpoint.dir>/
  spec.toml                 the resolved spec (defaults filled in, overrides applied)
  metrics.jsonl             one JSON object per finished epoch, then a final test record
  final/model.safetensors   the trained weights, with what is needed to use them as metadata
  status.json               the run's state and a heartbeat, rewritten while it runs (heartbeat.py)
  log.txt                   what the run printed, one timestamped line per message or epoch
  checkpoints/              payloads and commit records (checkpoint.py)
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from runner import __version__, storage
from runner.errors import UserError

if TYPE_CHECKING:
    from runner.data import DatasetInfo
    from runner.spec import JobSpec

SPEC = "spec.toml"
METRICS = "metrics.jsonl"
FINAL_WEIGHTS = "final/model.safetensors"
CHECKPOINTS = "checkpoints"
STATUS = "status.json"
LOG = "log.txt"
OWNED = (SPEC, METRICS, CHECKPOINTS, "final", STATUS, LOG)  # what `--fresh --overwrite` may delete

# GCS takes about one write per second to the same object name; faster rewrites get
# 429s and stall in retries. Epochs of a small model on a GPU can be shorter than that.
METRICS_MIN_INTERVAL_S = 1.0


class RunDir:
    def __init__(self, url: str):
        self.url = url
        self._metrics_written = -float("inf")
        self._metrics_skipped: list[dict[str, Any]] | None = None  # what the rate limit held back

    def path(self, name: str) -> str:
        return storage.join(self.url, name)

    def write_spec(self, toml_text: str) -> None:
        storage.write_bytes(self.path(SPEC), toml_text.encode())

    def write_metrics(self, records: list[dict[str, Any]], final: bool = False) -> bool:
        """Rewrite metrics.jsonl whole (object stores have no append; the records are small).

        At most once per METRICS_MIN_INTERVAL_S: an earlier call is skipped (the next
        one writes every record), except the final one, which waits its turn.
        """
        wait = self._metrics_written + METRICS_MIN_INTERVAL_S - time.monotonic()
        if wait > 0:
            if not final:
                self._metrics_skipped = records
                return False
            time.sleep(wait)
        lines = "".join(json.dumps(r) + "\n" for r in records)
        storage.write_bytes(self.path(METRICS), lines.encode())
        self._metrics_written, self._metrics_skipped = time.monotonic(), None
        return True

    def flush_metrics(self) -> None:
        """Write what the rate limit held back, if anything (waiting its turn): for a process
        that ends without a final record, so that `runner status` shows every epoch."""
        if self._metrics_skipped is not None:
            self.write_metrics(self._metrics_skipped, final=True)

    def looks_like_a_run(self) -> bool:
        names = storage.list_names(self.url)
        return SPEC in names or CHECKPOINTS in names

    def delete_run(self) -> None:
        """Delete what a run writes here, and nothing else."""
        for name in OWNED:
            storage.delete_tree(self.path(name))

    def read_metrics(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in storage.read_bytes(self.path(METRICS)).decode().splitlines()]

    def read_final(self) -> tuple[dict[str, Any], dict[str, str]]:
        """The final weights and their metadata (see `weights_metadata`)."""
        from safetensors.torch import load

        data = storage.read_bytes(self.path(FINAL_WEIGHTS))
        # An 8-byte little-endian header length, then a JSON header whose "__metadata__"
        # holds the string pairs written with the weights (safetensors.torch.load drops them).
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
        return load(data), header.get("__metadata__", {})

    def write_final(self, weights: dict[str, Any], metadata: dict[str, str]) -> None:
        from safetensors.torch import save

        tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
        storage.write_bytes(self.path(FINAL_WEIGHTS), save(tensors, metadata=metadata))


def weights_metadata(spec: JobSpec, info: DatasetInfo) -> dict[str, str]:
    """What a program needs to use the weights without the spec (safetensors metadata is str->str)."""
    return {
        "format": "runner/1",
        "runner_version": __version__,
        "model": spec.model,
        "model_options": json.dumps(spec.model_options),
        "dataset": spec.data.dataset,
        "input_shape": json.dumps(info.shape),
        "classes": json.dumps(info.classes),
        "mean": json.dumps(info.mean),
        "std": json.dumps(info.std),
    }


def open_run(url: str) -> RunDir:
    """The run directory a user named on the command line, or a one-line UserError (exit 2)."""
    storage.check_reachable(url, "RUN")
    try:
        names = storage.list_names(url)
    except OSError as e:
        raise storage.failure(url, e) from None
    if not names:
        raise UserError(f"{url}: no run there (nothing found); name a run directory such as runs/digits")
    run_dir = RunDir(url)
    if not run_dir.looks_like_a_run():
        raise UserError(
            f"{url}: not a run directory (no {SPEC} or {CHECKPOINTS}/); name a run directory such as runs/digits"
        )
    return run_dir


def newest_finished_sibling(run_url: str) -> RunDir | None:
    """The most recently finished run directory beside `run_url` (not itself), if any."""
    parent, _, own = run_url.rstrip("/").rpartition("/")
    parent = parent or "."
    finished = []
    for name in storage.list_names(parent):
        weights = storage.join(parent, name, FINAL_WEIGHTS)
        if name != own and storage.exists(weights):
            finished.append((storage.modified(weights), storage.join(parent, name)))
    return RunDir(max(finished)[1]) if finished else None
