"""Runner jobs for the benchmarks: their spec files, and what runner reports about them."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

# The tutorials train on all 60,000 images and test on the 10,000 once at the end; runner
# does the same work with no validation split (its per-epoch validation is extra work).
SPEC = """\
name = {name}
model = {model}
epochs = {epochs}
lr = 0.001
optimizer = "adam"
lr_schedule = "constant"
batch_size = {batch_size}
seed = 0
device = {device}
threads = {threads}
compile = {compile}

[data]
dataset = {dataset}
root = {root}
download = false
val_fraction = 0.0

[checkpoint]
dir = {run_dir}
every_seconds = {every_seconds}
"""


@dataclass(frozen=True)
class Job:
    model: str
    epochs: int
    device: str
    threads: int
    dataset: str
    root: Path
    batch_size: int = 128
    compile: bool = False  # runner's torch.compile (off by default)

    def write_spec(self, path: Path, run_dir: str, every_seconds: float = 300) -> Path:
        """The spec file; every_seconds = 300 is runner's default."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fields = {**self.__dict__, "name": path.stem, "root": str(self.root), "run_dir": run_dir}
        quoted = {k: json.dumps(v) if isinstance(v, str | bool) else v for k, v in fields.items()}  # as TOML
        path.write_text(SPEC.format(every_seconds=every_seconds, **quoted))
        return path

    def batches(self, train_samples: int) -> int:
        return math.ceil(train_samples / self.batch_size)


@dataclass(frozen=True)
class Reported:
    """What `runner run` wrote to metrics.jsonl."""

    samples_per_s: float  # over all epochs: total samples / total time in the training loop
    test_acc: float
    epochs: int


def reported(metrics_jsonl: str) -> Reported:
    records = [json.loads(line) for line in metrics_jsonl.splitlines() if line.strip()]
    epochs, final = [r for r in records if "samples_per_s" in r], records[-1]
    # Every epoch trains the same number of samples, so the overall rate is the harmonic mean.
    rate = len(epochs) / sum(1 / r["samples_per_s"] for r in epochs)
    return Reported(rate, final["test_acc"], len(epochs))
