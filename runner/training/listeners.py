"""The listeners that write what a run leaves behind: metrics.jsonl, checkpoints, log.txt.

They are given only to the process that writes the run directory (rank 0); the
progress display (progress.py) is the one listener that only shows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runner.training.events import Listener
from runner.training.progress import epoch_line

if TYPE_CHECKING:
    from runner.rundir.layout import RunDir
    from runner.training.checkpointer import Checkpointer
    from runner.training.engine import Running, TrainState


class MetricsFile(Listener):
    """metrics.jsonl, rewritten whole after every epoch from the training state's history."""

    def __init__(self, run_dir: RunDir, state: TrainState, say: Callable[[str], None]):
        self.run_dir, self.state, self.say = run_dir, state, say

    def epoch_end(self, record: dict[str, Any]) -> None:
        try:
            self.run_dir.write_metrics(self.state.history)
        except Exception as e:  # the records live in the training state: next epoch writes them all
            self.say(f"could not write metrics.jsonl ({e}); training goes on, retrying next epoch")


class Checkpoints(Listener):
    """Asks the checkpointer for a save when one is due, and at every epoch end."""

    def __init__(self, checkpointer: Checkpointer, state: TrainState):
        self.checkpointer, self.state = checkpointer, state

    def step(self, batch: int, running: Running) -> None:
        self.checkpointer.after_step(self.state.step)

    def epoch_end(self, record: dict[str, Any]) -> None:
        self.checkpointer.after_step(self.state.step, epoch_end=True)


class LogFile(Listener):
    """Each epoch's line in log.txt (the display prints it; `log` writes to the log alone)."""

    def __init__(self, log: Callable[[str], None], epochs: int):
        self.log, self.epochs = log, epochs

    def epoch_end(self, record: dict[str, Any]) -> None:
        self.log(epoch_line(record, self.epochs))
