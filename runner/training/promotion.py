"""The promotion gate at the end of a run ([promote] enabled): rank 0, once the final weights
are written, compares them with the job's promoted model on this run's held-out samples,
already on the training device, and promotes them if they are better (use/gate.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from runner.errors import UserError
from runner.rundir.promotions import Promotions

if TYPE_CHECKING:
    from runner.rundir.layout import RunDir
    from runner.spec import JobSpec
    from runner.training.engine import Trainer
    from runner.use.gate import Decision


def check_promotable(spec: JobSpec) -> None:
    """UserError, before anything is written, if the run could not be promoted at its end."""
    if spec.promote.enabled and Promotions.beside(spec.checkpoint.dir) is None:
        raise UserError(
            f"promote.enabled: checkpoint.dir {spec.checkpoint.dir} is a bucket's root, with no job prefix to "
            "hold promotions; put the job's runs in a folder (gs://BUCKET/jobs/NAME/RUN)"
        )


def promote_after_training(spec: JobSpec, run_dir: RunDir, trainer: Trainer, say: Callable[[str], None]) -> Decision:
    """Run the gate for the finished run in `run_dir`; its decision (said by the caller)."""
    from runner.use.evaluate import evaluate
    from runner.use.gate import gate

    split = "test" if spec.promote.metric == "test_acc" else "val"
    samples = trainer.test if split == "test" else trainer.val

    def score(trained):  # noqa: ANN001, ANN202 - a use.trained.Trained -> accuracy
        return evaluate(trained, samples.x, samples.y, split, trainer.device).accuracy

    return gate(run_dir, spec.promote.metric, spec.promote.min_improvement, score, say, step=trainer.state.step)
