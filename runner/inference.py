"""Using what a run trained: its model and preprocessing, predictions, evaluation.

The weights are the run's final ones (final/model.safetensors, whose metadata says how
to build and feed the model) or, for a run that has not finished (still going,
stopped, killed) or when asked, a committed checkpoint's, with the spec it was
trained from. Either way the network comes back behind the engine's normalisation,
as a `Classifier` that takes pixels on the 0..255 scale, the way the data sets hold
them: eval, predict and export all feed it that.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from runner import images as images_
from runner import storage
from runner.checkpoint import CheckpointStore, Corrupt, Entry
from runner.data import DATASETS, load_dataset
from runner.device import select
from runner.engine import normalisation, normalise
from runner.errors import UserError
from runner.models import build_model
from runner.rundir import CHECKPOINTS, FINAL_WEIGHTS, SPEC, RunDir, weights_metadata
from runner.spec import JobSpec, resolve, resume_conflicts, validate_spec

if TYPE_CHECKING:
    pass

LATEST = "latest"
EVAL_BATCH = 1024


def _ignore(message: str) -> None:
    pass


class Classifier(nn.Module):
    """A trained network behind the run's input normalisation: pixels (N, C, H, W) on the
    0..255 scale in (uint8 or float), logits out."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.net = net
        scale, shift = normalisation(mean, std)
        # The engine's scale and shift, and its normalise: the model sees what it was trained
        # on, to the last bit. Not in state_dict, which stays the network's.
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalise(pixels))

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        return normalise(pixels, self.scale, self.shift)


@dataclass(frozen=True)
class Trained:
    model: Classifier  # in eval mode, on the CPU
    metadata: dict[str, str]  # what final/model.safetensors holds (rundir.weights_metadata)
    source: str  # which weights, for people: final, or a checkpoint at some step

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(json.loads(self.metadata["input_shape"]))  # type: ignore[return-value]

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(json.loads(self.metadata["classes"]))

    @property
    def light_on_dark(self) -> bool:
        """Whether the training images show light strokes on a dark ground: grey data sets
        that are mostly dark (MNIST, Fashion-MNIST, digits: mean brightness 13-29%)."""
        mean = json.loads(self.metadata["mean"])
        return len(mean) == 1 and mean[0] < 0.5


# -- the weights -------------------------------------------------------------


def load_trained(run_dir: RunDir, checkpoint: str | None = None, warn: Callable[[str], None] = _ignore) -> Trained:
    """The run's final weights; a checkpoint's when there are none yet, or when `checkpoint`
    names one ("latest", or a step). `warn` hears about checkpoints that had to be skipped."""
    final = run_dir.path(FINAL_WEIGHTS)
    if checkpoint is None:
        try:
            weights, metadata = run_dir.read_final()
        except FileNotFoundError:
            pass
        else:
            if not metadata.get("format", "").startswith("runner/"):
                raise UserError(
                    f"{final}: weights without runner's metadata (model, classes, ...); not written by runner"
                )
            return _build(weights, metadata, f"final weights ({final})")
    payload, entry = _checkpoint(run_dir, checkpoint or LATEST, warn)
    url = storage.join(run_dir.url, CHECKPOINTS, entry.file)
    spec = validate_spec(tomllib.loads(payload["spec"]), url)
    # A checkpoint has no metadata of its own: what the run's final weights would carry.
    metadata = weights_metadata(spec, DATASETS[spec.data.dataset])
    why = "" if checkpoint else ": the run has no final weights yet"
    return _build(payload["state"]["model"], metadata, f"checkpoint at step {entry.step} ({url}){why}")


def _checkpoint(run_dir: RunDir, which: str, warn: Callable[[str], None]) -> tuple[dict[str, Any], Entry]:
    store = CheckpointStore(run_dir.url, keep=1)  # read only: keep is for writers
    entries = store.refresh()
    if not entries:
        raise UserError(f"{run_dir.url}: no weights yet (no {FINAL_WEIGHTS} and no committed checkpoint)")
    if which == LATEST:
        found = store.newest_valid(warn)
        if found is None:
            raise UserError(f"{run_dir.url}: none of its {len(entries)} committed checkpoints can be used (see above)")
        return found
    steps = ", ".join(str(e.step) for e in entries)
    entry = next((e for e in entries if str(e.step) == which), None)
    if entry is None:
        raise UserError(f"--checkpoint {which}: {run_dir.url} has no checkpoint at that step; it has: latest, {steps}")
    try:
        return store.load(entry), entry
    except Corrupt as e:
        raise UserError(f"--checkpoint {which}: {entry.file} is unusable: {e}") from None


def _build(weights: dict[str, torch.Tensor], metadata: dict[str, str], source: str) -> Trained:
    shape = tuple(json.loads(metadata["input_shape"]))
    classes = json.loads(metadata["classes"])
    # Built on the CPU from torch's RNG, then overwritten: fork it so that loading a
    # model leaves the caller's random stream where it was.
    with torch.random.fork_rng(devices=[]):
        net = build_model(metadata["model"], json.loads(metadata["model_options"]), shape, len(classes))  # type: ignore[arg-type]
    net.load_state_dict(weights)
    model = Classifier(net, json.loads(metadata["mean"]), json.loads(metadata["std"])).eval()
    return Trained(model, metadata, source)


# -- evaluation ----------------------------------------------------------------


def run_spec(run_dir: RunDir, overrides: Sequence[str] = ()) -> JobSpec:
    """The run's resolved spec, with `overrides` that keep its meaning: where the data is
    (data.root, data.download) and where to compute (device, threads) may change; what
    would make another split (seed, data.val_fraction, the data set) may not."""
    source = run_dir.path(SPEC)
    try:
        saved = tomllib.loads(storage.read_bytes(source).decode())
    except FileNotFoundError:
        raise UserError(f"{run_dir.url}: no {SPEC} (the run never started training); nothing to evaluate") from None
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
    warn: Callable[[str], None] = _ignore,
) -> Evaluation:
    """The run's weights on its test or validation split: the same samples the run used."""
    spec = run_spec(run_dir, overrides)  # bad overrides fail before the weights load
    trained = load_trained(run_dir, checkpoint, warn)
    data = load_dataset(spec.data.dataset, spec.data.root, spec.data.download, spec.data.val_fraction, spec.seed)
    samples = data.test if split == "test" else data.val
    if not len(samples):
        raise UserError(
            f"--split {split}: the run held out no validation samples (data.val_fraction = 0); use --split test"
        )
    return evaluate(trained, samples.x, samples.y, split, _device(spec))


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


def _device(spec: JobSpec) -> torch.device:
    try:  # fp32: the exact answer, not autocast's approximation of it
        placement = select(spec.device, "fp32", spec.threads)
    except UserError:  # trained on a GPU this machine lacks: the CPU gives the same answers, slower
        placement = select("cpu", "fp32", spec.threads)
    return torch.device(placement.device)


# -- images --------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    image: str
    inverted: bool
    top: list[tuple[str, float]]  # (class, probability), most likely first

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "inverted": self.inverted,
            "top": [{"class": c, "probability": p} for c, p in self.top],
        }


@torch.no_grad()
def predict(trained: Trained, images: Sequence[str], top: int = 3, invert: str = "auto") -> list[Prediction]:
    """The `top` most likely classes of each image file, with their probabilities."""
    prepared = [
        images_.to_pixels(images_.read_image(url), trained.input_shape, invert, trained.light_on_dark) for url in images
    ]
    probabilities = torch.softmax(trained.model(torch.stack([pixels for pixels, _ in prepared])), dim=1)
    values, indices = probabilities.topk(min(top, len(trained.classes)), dim=1)
    return [
        Prediction(url, inverted, [(trained.classes[i], p) for i, p in zip(idx.tolist(), vals.tolist(), strict=True)])
        for url, (_, inverted), vals, idx in zip(images, prepared, values, indices, strict=True)
    ]
