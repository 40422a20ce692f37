"""What the training loop reports, and the list of listeners that hear it.

The engine calls one `Listener`; a session hands it `Listeners`, which passes each
event to every listener in order. Adding a listener (TensorBoard, a metrics sink) is
one more entry in that list (training/session.py), never a change to the loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.training.engine import Running


class Listener:
    """One party interested in the loop's events; every method is optional (a no-op here).

    Called on the training thread, between steps: keep each call short, and never
    synchronise with the device on every step.
    """

    def epoch_start(self, epoch: int, batch: int, batches: int) -> None:
        """Epoch `epoch` (0-based) starts, or resumes, at batch `batch` of `batches`."""

    def step(self, batch: int, running: Running) -> None:
        """A step ended; `batch` batches of the epoch are done. `running` holds device-side sums."""

    def epoch_end(self, record: dict[str, Any]) -> None:
        """An epoch was trained and evaluated: `record` is its metrics.jsonl record."""


class Listeners(Listener):
    """Fans each event out to `listeners`, in order (the order is the order things happen in)."""

    def __init__(self, listeners: Sequence[Listener]):
        self.listeners = tuple(listeners)

    def epoch_start(self, epoch: int, batch: int, batches: int) -> None:
        for listener in self.listeners:
            listener.epoch_start(epoch, batch, batches)

    def step(self, batch: int, running: Running) -> None:
        for listener in self.listeners:
            listener.step(batch, running)

    def epoch_end(self, record: dict[str, Any]) -> None:
        for listener in self.listeners:
            listener.epoch_end(record)
