"""Evaluating a run's weights on its own held-out samples: accuracy, per class, confusion.

The split is rebuilt from the run's own spec (data set, val_fraction, seed), so
`--split val` is exactly the validation set the run saw and the test accuracy equals
the one in metrics.jsonl.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from runner.data.datasets import Split, load_dataset
from runner.data.fingerprint import Fingerprint, changes, same_classes
from runner.device import select
from runner.errors import UserError
from runner.rundir.layout import SPEC, RunDir
from runner.spec import JobSpec, resolve, resume_conflicts
from runner.use.trained import Trained, load_trained

EVAL_BATCH = 1024


def run_spec(run_dir: RunDir, overrides: Sequence[str] = ()) -> JobSpec:
    """The run's resolved spec, with `overrides` that keep its meaning: where the data is
    (data.root, data.download) and where to compute (device, threads) may change; what
    would make another split (seed, data.val_fraction, the data set) may not."""
    source = run_dir.path(SPEC)
    saved = run_dir.read_spec()
    if saved is None:
        raise UserError(f"{run_dir.url}: no {SPEC} (the run never started training); nothing to evaluate")
    spec = resolve(saved, source, overrides)
    if conflicts := resume_conflicts(saved, spec):
        raise UserError(
            f"--set: {', '.join(conflicts)} would evaluate something other than what the run trained on; "
            "only where the data is (data.root, data.download) and where to compute (device, threads) may change"
        )
    return spec


@dataclass(frozen=True)
class Evaluation:
    weights: str  # Trained.source
    split: str  # "test" or "val"
    classes: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]  # [true class][predicted class] -> samples
    loss: float  # mean cross-entropy

    @property
    def samples(self) -> int:
        return sum(map(sum, self.confusion))

    @property
    def correct(self) -> int:
        return sum(row[i] for i, row in enumerate(self.confusion))

    @property
    def accuracy(self) -> float:
        return self.correct / self.samples

    def per_class(self) -> list[tuple[str, int, int]]:
        """(class, samples, correct) for each class."""
        return [(c, sum(row), row[i]) for i, (c, row) in enumerate(zip(self.classes, self.confusion, strict=True))]

    def to_json(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "split": self.split,
            "samples": self.samples,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "loss": self.loss,
            "classes": list(self.classes),
            "per_class": {
                c: {"samples": n, "correct": k, "accuracy": k / n if n else None} for c, n, k in self.per_class()
            },
            "confusion": [list(row) for row in self.confusion],
        }


def evaluate_run(
    run_dir: RunDir,
    split: str = "test",
    checkpoint: str | None = None,
    overrides: Sequence[str] = (),
    warn: Callable[[str], None] = lambda message: None,
) -> Evaluation:
    """The run's weights on its test or validation split: the same samples the run used."""
    spec = run_spec(run_dir, overrides)  # bad overrides fail before the weights load
    trained = load_trained(run_dir, checkpoint, warn)
    samples = held_out(spec, split, "--split", trained, warn)
    return evaluate(trained, samples.x, samples.y, split, device_for(spec))


def held_out(
    spec: JobSpec,
    split: str,
    option: str,
    trained: Trained | None = None,
    warn: Callable[[str], None] = lambda message: None,
) -> Split:
    """The run's own test or validation samples, as it drew them; UserError (naming `option`)
    for a validation split the run did not hold out. Data that changed since `trained` was
    trained on it: `warn` hears what changed; other classes are a UserError (its outputs
    would be read as the wrong classes)."""
    d = spec.data
    data = load_dataset(d.dataset, d.root, d.download, d.val_fraction, spec.seed, d.options())
    recorded = trained and trained.metadata.get("data_fingerprint")
    if recorded:
        old = Fingerprint.from_dict(json.loads(recorded))
        if said := "; ".join(changes(old, data.fingerprint)):
            if not same_classes(old, data.fingerprint):
                raise UserError(
                    f"data.root: the classes under {d.root} are not the ones the model was trained on ({said}); "
                    "its outputs would be read as the wrong classes: put the class folders back"
                )
            warn(
                f"data.root: the data changed since the model was trained on it ({said}); figures are on it as it is now"
            )
    samples = data.test if split == "test" else data.val
    if not len(samples):
        raise UserError(
            f"{option} {split}: the run held out no validation samples (data.val_fraction = 0); use {option} test"
        )
    return samples


@torch.no_grad()
def evaluate(trained: Trained, x: torch.Tensor, y: torch.Tensor, split: str, device: torch.device) -> Evaluation:
    """Accuracy, per-class accuracy and the confusion matrix of `trained` on pixels `x`, labels `y`."""
    k = len(trained.classes)
    model = trained.model.to(device)
    confusion = torch.zeros(k * k, dtype=torch.int64, device=device)
    loss = torch.zeros((), dtype=torch.float64, device=device)
    for i in range(0, len(y), EVAL_BATCH):
        logits = model(x[i : i + EVAL_BATCH].to(device)).float()
        labels = y[i : i + EVAL_BATCH].to(device)
        loss += nn.functional.cross_entropy(logits, labels, reduction="sum")
        confusion += torch.bincount(labels * k + logits.argmax(1), minlength=k * k)
    trained.model.cpu()
    rows = tuple(tuple(row) for row in confusion.view(k, k).tolist())
    return Evaluation(trained.source, split, trained.classes, rows, loss.item() / len(y))


def device_for(spec: JobSpec) -> torch.device:
    try:  # fp32: the exact answer, not autocast's approximation of it
        placement = select(spec.device, "fp32", spec.threads)
    except UserError:  # trained on a GPU this machine lacks: the CPU gives the same answers, slower
        placement = select("cpu", "fp32", spec.threads)
    return torch.device(placement.device)
