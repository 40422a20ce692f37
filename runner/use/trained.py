"""A run's trained model, ready to use: the network behind the run's own preprocessing.

The weights are the run's final ones (final/model.safetensors, whose metadata says how
to build and feed the model) or, for a run that has not finished (still going,
stopped, killed) or when asked, a committed checkpoint's, with the spec and the
preprocessing it was trained with. Either way the network comes back as a
`Classifier` that takes pixels on the 0..255 scale, the way the data sets hold them:
eval, predict and export all feed it that. Nothing here imports the training loop.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from runner.data.preprocessing import Preprocessing, normalisation, normalise
from runner.errors import UserError
from runner.models.registry import build_model
from runner.rundir.checkpoints import Corrupt, Entry
from runner.rundir.layout import FINAL_WEIGHTS, RunDir, weights_metadata
from runner.spec import JobSpec, validate_spec

LATEST = "latest"


def _ignore(message: str) -> None:
    pass


class Classifier(nn.Module):
    """A trained network behind the run's input normalisation: pixels (N, C, H, W) on the
    0..255 scale in (uint8 or float), logits (N, classes) out."""

    def __init__(self, net: nn.Module, pre: Preprocessing):
        super().__init__()
        self.net = net
        scale, shift = normalisation(pre.mean, pre.std)
        # Training's scale and shift, and its normalise: the model sees what it was trained
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
    metadata: dict[str, str]  # what final/model.safetensors holds (rundir.layout.weights_metadata)
    source: str  # which weights, for people: final, or a checkpoint at some step

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.metadata)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.preprocessing.input_shape

    @property
    def classes(self) -> tuple[str, ...]:
        return self.preprocessing.classes


def load_trained(run_dir: RunDir, checkpoint: str | None = None, warn: Callable[[str], None] = _ignore) -> Trained:
    """The run's final weights; a checkpoint's when there are none yet, or when `checkpoint`
    names one ("latest", or a step). `warn` hears about checkpoints that had to be skipped.
    Raises UserError when there are no usable weights."""
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
    url = run_dir.checkpoint_index().url_of(entry)
    spec = validate_spec(tomllib.loads(payload["spec"]), url)
    # A checkpoint has no metadata of its own: what the run's final weights would carry.
    pre = checkpoint_preprocessing(payload, spec)
    metadata = weights_metadata(
        spec.model, spec.model_options, spec.data.dataset, pre, code=spec.code, data=payload.get("data")
    )
    why = "" if checkpoint else ": the run has no final weights yet"
    return _build(payload["state"]["model"], metadata, f"checkpoint at step {entry.step} ({url}){why}")


def checkpoint_preprocessing(payload: dict[str, Any], spec: JobSpec) -> Preprocessing:
    """What the checkpoint's model was fed. Checkpoints written before they carried it
    (runner before its regrouping) get their built-in data set's, the one place that
    still consults the dataset registry."""
    if "preprocessing" in payload:
        return Preprocessing.from_dict(payload["preprocessing"])
    from runner.data.datasets import DATASETS

    return DATASETS[spec.data.dataset].preprocessing


def _checkpoint(run_dir: RunDir, which: str, warn: Callable[[str], None]) -> tuple[dict[str, Any], Entry]:
    index = run_dir.checkpoint_index()
    entries = index.refresh()
    if not entries:
        raise UserError(f"{run_dir.url}: no weights yet (no {FINAL_WEIGHTS} and no committed checkpoint)")
    if which == LATEST:
        found = index.newest_valid(warn)
        if found is None:
            raise UserError(f"{run_dir.url}: none of its {len(entries)} committed checkpoints can be used (see above)")
        return found
    steps = ", ".join(str(e.step) for e in entries)
    entry = next((e for e in entries if str(e.step) == which), None)
    if entry is None:
        raise UserError(f"--checkpoint {which}: {run_dir.url} has no checkpoint at that step; it has: latest, {steps}")
    try:
        return index.load(entry), entry
    except Corrupt as e:
        raise UserError(f"--checkpoint {which}: {entry.file} is unusable: {e}") from None


def _build(weights: dict[str, torch.Tensor], metadata: dict[str, str], source: str) -> Trained:
    pre = Preprocessing.from_dict(metadata)
    # Built on the CPU from torch's RNG, then overwritten: fork it so that loading a
    # model leaves the caller's random stream where it was.
    with torch.random.fork_rng(devices=[]):
        options, code = json.loads(metadata["model_options"]), json.loads(metadata.get("code", "[]"))
        net = build_model(metadata["model"], options, pre.input_shape, len(pre.classes), code)
    net.load_state_dict(weights)
    return Trained(Classifier(net, pre).eval(), metadata, source)
