"""How a run shows its progress: a rich progress bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from runner.training.events import Listener

if TYPE_CHECKING:
    from runner.training.engine import Running

REFRESH_S = 0.25  # each refresh reads the loss off the device: a sync, so not every step


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """An epoch's metrics.jsonl record as the one line a person reads (and log.txt keeps)."""

    def fmt(key: str, spec: str) -> str:
        value = record.get(key)
        return "-" if value is None else format(value, spec)

    return (
        f"epoch {record['epoch']}/{epochs}  step {record['step']}  "
        f"train_loss {fmt('train_loss', '.4f')}  val_loss {fmt('val_loss', '.4f')}  "
        f"val_acc {fmt('val_acc', '.2%')}  {fmt('samples_per_s', ',.0f')} samples/s  lr {fmt('lr', '.3g')}"
    )


class ProgressDisplay(Listener):
    """The loop's events for a person watching: a live bar on a terminal, and each epoch's line."""

    def __init__(self, console: Console, epochs: int, quiet: bool = False):
        self.console, self.epochs = console, epochs
        self.bar = (
            Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(
                    "loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.1%}  {task.fields[rate]:,.0f} samples/s"
                ),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            if console.is_terminal and not quiet
            else None
        )
        self.task: Any = None

    def __enter__(self) -> ProgressDisplay:
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar:
            self.bar.stop()

    def epoch_start(self, epoch: int, batch: int, batches: int) -> None:
        self.started, self.first_batch, self.last = time.perf_counter(), batch, 0.0
        if self.bar:
            fields = dict(epoch=epoch + 1, epochs=self.epochs, loss=float("nan"), acc=float("nan"), rate=0.0)
            if self.task is None:
                self.task = self.bar.add_task("train", total=batches, completed=batch, **fields)
            else:
                self.bar.reset(self.task, total=batches, completed=batch, **fields)

    def step(self, batch: int, running: Running) -> None:
        now = time.perf_counter()
        if not self.bar or now - self.last < REFRESH_S:
            return
        self.last = now
        loss, acc = running.means()
        # Running sums cover the whole epoch; samples/s only what this process trained.
        rate = running.seen * (batch - self.first_batch) / max(batch, 1) / (now - self.started)
        self.bar.update(self.task, completed=batch, loss=loss, acc=acc, rate=rate)

    def epoch_end(self, record: dict[str, Any]) -> None:
        self.console.print(epoch_line(record, self.epochs), highlight=False)
