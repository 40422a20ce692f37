"""How a run shows its progress: a rich progress bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from runner.training.events import Listener

if TYPE_CHECKING:
    from runner.training.engine import Running

REFRESH_S = 0.25  # each refresh reads the loss off the device: a sync, so not every step


class RunConsole(Console):
    """The console a run prints to. rich answers a broken pipe with SystemExit(1), right for
    a command in a shell pipeline, wrong for a run, which must still save and exit 143."""

    def on_broken_pipe(self) -> None:
        _silence(self)


def show(console: Console, text: str) -> None:
    """Print a line for the person watching, if anyone still can.

    A closed terminal or a dropped SSH session (the SIGHUP that stops a run) leaves the
    output nowhere to go, and a write then fails (EIO; EPIPE for a pipe nobody reads).
    Losing the line is fine (log.txt has it); losing the run's checkpoint or exit code is
    not.
    """
    try:
        console.print(text, highlight=False, markup=False)
    except OSError:
        _silence(console)


def _silence(console: Console) -> None:
    """Point the console's stream at /dev/null for the rest of the process: later lines, and
    the flush at exit (whose failure would turn any exit code into 120), go nowhere quietly."""
    console.quiet = True
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), console.file.fileno())


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
            if console.is_terminal and _isatty(console.file) and not quiet
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
        show(self.console, epoch_line(record, self.epochs))


def _isatty(file: Any) -> bool:
    """Whether `file` is a terminal that a live bar can redraw. rich's is_terminal also says
    yes to a pipe when FORCE_COLOR is set, as Jupyter kernels set it for their subprocesses:
    a notebook cell would then fill with cursor codes instead of one line per epoch."""
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False
