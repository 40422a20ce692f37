"""`runner run`: one job, start to finish, in this process.

Everything that can be wrong with the input (device, data, model) is checked
before the run directory is touched, so bad input writes nothing.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rich.console import Console

from runner import __version__
from runner.rundir import FINAL_WEIGHTS, RunDir
from runner.spec import JobSpec, to_toml

if TYPE_CHECKING:
    from runner.data import DatasetInfo
    from runner.engine import Trainer, TrainState


class _Recorder:
    """engine.Events: metrics.jsonl after every epoch, then the display."""

    def __init__(self, run_dir: RunDir, state: TrainState, display: Any):
        self.run_dir, self.state, self.display = run_dir, state, display

    def epoch_start(self, epoch: int, batch: int, batches: int) -> None:
        self.display.epoch_start(epoch, batch, batches)

    def step(self, batch: int, running: Any) -> None:
        self.display.step(batch, running)

    def epoch_end(self, record: dict[str, Any]) -> None:
        self.run_dir.write_metrics(self.state.history)
        self.display.epoch_end(record)


def build_trainer(spec: JobSpec) -> Trainer:
    """Device, data and model for `spec`: every check of the input that needs torch."""
    import torch

    from runner.data import load_dataset
    from runner.device import select
    from runner.engine import Trainer
    from runner.models import build_model

    placement = select(spec.device, spec.precision, spec.threads)
    data = load_dataset(spec.data.dataset, spec.data.root, spec.data.download, spec.data.val_fraction, spec.seed)
    torch.manual_seed(spec.seed)  # seeds the weights and dropout (CPU and every GPU)
    model = build_model(spec.model, spec.model_options, data.info.shape, data.info.num_classes)
    return Trainer(spec, model, data, placement)


def run(spec: JobSpec, console: Console, quiet: bool = False) -> dict[str, Any]:
    """Train `spec` and write its run directory. Returns the final (test) record."""
    import torch

    from runner.progress import ProgressDisplay

    trainer = build_trainer(spec)
    run_dir = RunDir(spec.checkpoint.dir)
    run_dir.write_spec(to_toml(spec))
    console.print(
        f"{spec.name}: {spec.model} on {spec.data.dataset} "
        f"({len(trainer.train)} train / {len(trainer.val)} val / {len(trainer.test)} test) on {trainer.placement.device}, "
        f"{trainer.placement.precision}, {torch.get_num_threads()} CPU threads -> {run_dir.url}",
        highlight=False,
    )
    state = trainer.state
    with ProgressDisplay(console, spec.epochs, quiet) as display:
        trainer.fit(_Recorder(run_dir, state, display))
    test_loss, test_acc = trainer.evaluate(trainer.test)
    final = {"epoch": state.epoch, "step": state.step, "test_loss": test_loss, "test_acc": test_acc}
    run_dir.write_final(state.model.state_dict(), _weights_metadata(spec, trainer.info))
    run_dir.write_metrics([*state.history, final])
    console.print(
        f"done: test_acc {test_acc:.2%} (test_loss {test_loss:.4f}); weights at {run_dir.path(FINAL_WEIGHTS)}",
        highlight=False,
    )
    return final


def _weights_metadata(spec: JobSpec, info: DatasetInfo) -> dict[str, str]:
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
