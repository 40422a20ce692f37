"""TensorBoard event files: a run's curves, for `tensorboard --logdir <run directory>`.

The writing process (rank 0) logs into <run>/tensorboard/ each epoch's metrics.jsonl
record (`epoch/train_loss`, `epoch/val_acc`, `epoch/lr`, `epoch/samples_per_s`, ...), the
training loss of single steps (`step/train_loss`, a few hundred points a run), the test
results (`final/test_loss`, `final/test_acc`), and the hyperparameters (the hparams plugin,
with `final/test_acc` as their metric). Values are float32, as TensorBoard stores scalars:
its data server (the default reader) drops float64 ones.

An event file only grows, and objects in a bucket cannot be appended to. So each attempt
(process start) writes its own file in a local temporary folder (torch's SummaryWriter) and
copies it into the run directory through runner.storage, appended to a local file and
rewritten whole in a bucket, on a background thread: when a checkpoint is taken (so what a
resume keeps is in TensorBoard too), at each epoch end, every LIVE_S seconds and at the
end. TensorBoard merges the files of a folder, read in name order; the files are named
after the attempt's claim on the run directory (rundir/writer.py), which a later attempt
always exceeds, whatever the clocks of the machines say.

Resume. An attempt that starts at step S (its checkpoint's) logs nothing before S + 1, but
one that stopped after that checkpoint may have logged past it: the steps it trained then
are trained again now. Each file begins with a SessionLog START at S + 1 (SummaryWriter's
purge_step), and TensorBoard's Python readers drop every point at S + 1 or later in the
files read before it: checked with EventAccumulator and plugin_event_multiplexer, the
START in a newer file than the orphaned points (tests/e2e/test_tensorboard.py). They take
the first START of a run as its start, not a restart: every attempt writes one, also the
first (S = 0). TensorBoard's data server (its default reader of local folders) ignores
START but drops a tag's points at or past the step at which a point of that tag comes
again, so the orphans go as the resumed attempt logs the same steps again.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from runner import storage, strict_json
from runner.spec_tables import TrainSpec
from runner.timebox import call_by, in_background, remaining
from runner.training.events import Listener

if TYPE_CHECKING:
    from runner.rundir.layout import RunDir
    from runner.spec import JobSpec
    from runner.training.engine import Running, Trainer, TrainState

INSTALL = "pip install 'runner[tensorboard]'"
# TensorBoard keeps 1,000 points of a series and samples the rest at random; a few hundred
# draw a loss curve well, and each costs a device sync, which every step would not afford.
STEP_POINTS = 300
LIVE_S = 10.0  # new points reach the run directory at least this often (TensorBoard reloads every 5 s)
MIN_INTERVAL_S = 1.0  # GCS takes about one write per second to the same object
CLOSE_S = 60.0  # the last copy may hold up the end of a run this long, and no longer
Say = Callable[[str], None]


def step_interval(steps_total: int) -> int:
    """Every how many steps the training loss is logged: the smallest of 1, 2, 5, 10, 20, ...
    that gives a run of `steps_total` steps at most STEP_POINTS points (pure)."""
    return next(m * 10**e for e in range(19) for m in (1, 2, 5) if steps_total <= STEP_POINTS * m * 10**e)


def hyperparameters(spec: JobSpec, precision: str) -> dict[str, Any]:
    """What the hparams table shows: the fields the training engine reads (TrainSpec), the model
    and its options, the data set (pure). `precision` is the one resolved ("auto" says little)."""
    train = {name: getattr(spec, name) for name in TrainSpec.model_fields}
    values = {
        "model": spec.model,
        "model_options": strict_json.dumps(spec.model_options),  # a table: one column, as JSON
        "dataset": spec.data.dataset,
        "val_fraction": spec.data.val_fraction,
        **train,
        "precision": precision,
    }
    # torch's hparams() would store a bool as the number 0 or 1.
    return {k: str(v).lower() if isinstance(v, bool) else v for k, v in values.items()}


def open_board(
    run_dir: RunDir, attempt: int, spec: JobSpec, trainer: Trainer, saved_step: Callable[[], int], say: Say, log: Say
) -> NoTensorBoard:
    """The TensorBoard listener of this attempt (`attempt`: the number of its claim on the run
    directory; `saved_step()`: the step of the newest checkpoint begun), or, without the
    tensorboard package, one that writes nothing, after one line saying how to get it."""
    try:
        import tensorboard  # noqa: F401 - torch's message for its absence names a version instead
    except ImportError:
        say(f"TensorBoard files are off: the tensorboard package is not installed ({INSTALL} to write them)")
        return NoTensorBoard()
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as e:  # noqa: BLE001 - a broken install must not stop the run
        say(f"TensorBoard files are off: torch.utils.tensorboard does not import ({e}); try {INSTALL}")
        return NoTensorBoard()
    hparams = hyperparameters(spec, trainer.placement.precision)
    steps_total = spec.epochs * trainer.batches
    name = f"events.out.tfevents.{attempt:08d}.runner"  # the files are read in name order
    try:
        return TensorBoard(
            SummaryWriter, run_dir.tensorboard_url, name, hparams, trainer.state, steps_total, saved_step, say, log
        )
    except Exception as e:  # noqa: BLE001 - the curves are never worth the run
        say(f"TensorBoard files are off: {e}")
        return NoTensorBoard()


class NoTensorBoard(Listener):
    """Writes nothing: what a run gets without the tensorboard package."""

    def end(self, final: dict[str, Any]) -> None:
        """The run is done: `final` is metrics.jsonl's final record."""

    def close(self, deadline: float | None = None) -> None:
        """Copy what is left to the run directory."""

    def abandon(self) -> None:
        """Stop without copying: another attempt owns the run directory now."""


class TensorBoard(NoTensorBoard):
    """Logs the run's events to a local event file and copies it to `folder`/`name` as it grows."""

    def __init__(
        self,
        summary_writer: Any,
        folder: str,
        name: str,
        hparams: dict[str, Any],
        state: TrainState,
        steps_total: int,
        saved_step: Callable[[], int],
        say: Say,
        log: Say,
    ):
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        self.url = storage.join(folder, name)
        self.state, self.saved_step, self.say, self.log = state, saved_step, say, log
        self.start, self.every = state.step, step_interval(steps_total)
        # The points of the earlier attempts that the START below keeps (see `_add`).
        self.earlier = _points_up_to(folder, self.start, log)
        self.staging = tempfile.mkdtemp(prefix="runner-tensorboard-")
        self.writer = summary_writer(self.staging, purge_step=self.start + 1)
        (staged,) = os.listdir(self.staging)
        self.file = os.path.join(self.staging, staged)
        self.before: tuple[Any, int] | None = None  # the running sums one step before a logged step
        self.inflight: Future[int] | None = None
        # Nothing copied yet (`last`: when the newest copy began): the first step makes one.
        self.written, self.owed, self.last, self.retry_at = 0, False, -math.inf, 0.0
        self.failed = self.closed = False
        metric = {"final/test_acc": None}  # the values are the scalars of that tag
        self.experiment, self.session_start, self.session_end = hparams_summaries(hparams, metric)
        for summary in (self.experiment, self.session_start):
            self._add(summary, 0)

    # -- the loop's events -----------------------------------------------------

    def epoch_start(self, epoch: int, batch: int, batches: int) -> None:
        if (self.state.step + 1) % self.every == 0:  # a resumed epoch too: its sums are restored
            self._keep_sums(self.state.running)

    def step(self, batch: int, running: Running) -> None:
        step = self.state.step
        if step % self.every == 0 and self.before is not None:
            # The step's own loss: the epoch's running sums less those before it (one sync).
            loss_sum, seen = self.before
            loss = (running.loss.double() - loss_sum.double()).item() / (running.seen - seen)
            self._scalar("step/train_loss", loss, step)
        if (step + 1) % self.every == 0:
            self._keep_sums(running)
        if self.owed or self.saved_step() == step or time.monotonic() - self.last >= LIVE_S:
            self._copy()

    def epoch_end(self, record: dict[str, Any]) -> None:
        self._record("epoch", record)
        self.owed = True
        self._copy()

    def end(self, final: dict[str, Any]) -> None:
        self._record("final", final)
        self._add(self.session_end, final["step"])

    def _keep_sums(self, running: Running) -> None:
        self.before = running.loss.clone(), running.seen  # on the device: no sync

    def _record(self, group: str, record: dict[str, Any]) -> None:
        for key, value in record.items():
            if key not in ("epoch", "step") and value is not None:
                self._scalar(f"{group}/{key}", value, record["step"])

    def _scalar(self, tag: str, value: float, step: int) -> None:
        from torch.utils.tensorboard.summary import scalar

        self._add(scalar(tag, value), step)  # float32: TensorBoard's data server drops float64 scalars

    def _add(self, summary: Any, step: int) -> None:
        # An attempt logs again some points its START keeps: at its first step, what the attempt
        # before it logged after the checkpoint at that step (an epoch evaluated again, the test
        # results), and the hyperparameters at step 0. A START purging these would purge the
        # steps before them too; so a point that is there already is not logged twice.
        if all((value.tag, step) in self.earlier for value in summary.value):
            return
        self.writer.file_writer.add_summary(summary, step)

    # -- copies to the run directory --------------------------------------------

    def _copy(self) -> None:
        """Start copying the file to the run directory, unless a copy is in flight or one began
        less than MIN_INTERVAL_S ago: then it is owed, and a later step starts it."""
        self.owed = True
        if self.inflight is not None:
            if not self.inflight.done():
                return
            self._reap()
        now = time.monotonic()
        if now < max(self.retry_at, self.last + MIN_INTERVAL_S):
            return
        data = self._read()
        self.owed, self.last = False, now
        if len(data) > self.written:
            self.inflight = in_background(self._send, data, self.written, name="tensorboard")

    def _read(self) -> bytes:
        self.writer.flush()  # whole records only: the queue is written out first
        with open(self.file, "rb") as f:
            return f.read()

    def _send(self, data: bytes, written: int) -> int:
        storage.append_bytes(self.url, data, written)
        return len(data)

    def _reap(self) -> None:
        future, self.inflight = self.inflight, None
        assert future is not None
        if (error := future.exception()) is None:
            self.written = future.result()
        else:
            self.retry_at = time.monotonic() + LIVE_S
            self._failed(error)

    def _failed(self, error: BaseException) -> None:
        message = f"could not write {self.url} ({str(error).strip() or type(error).__name__})"
        if self.failed:
            self.log(message)
        else:  # once: the store's own trouble shows in the checkpoints and metrics too
            self.say(f"{message}; training goes on, and TensorBoard's files are retried")
            self.failed = True

    def close(self, deadline: float | None = None) -> None:
        """Copy what is left to the run directory: by `deadline` (time.monotonic() seconds) when a
        stop signal's grace period runs, else within CLOSE_S."""
        if self.closed:
            return
        self.closed = True
        stopping = deadline is not None
        deadline = deadline if stopping else time.monotonic() + CLOSE_S
        try:
            if self.inflight is not None:
                self.inflight.exception(timeout=remaining(deadline))  # TimeoutError if not done by then
                self._reap()
            data = self._read()
            if len(data) > self.written:
                if not stopping:  # GCS's one write a second to an object; a grace period has no time for it
                    time.sleep(max(0.0, self.last + MIN_INTERVAL_S - time.monotonic()))
                self.written = call_by(deadline, self._send, data, self.written, name="tensorboard")
        except Exception as e:  # noqa: BLE001 - the run's outcome stands; only its curves are behind
            self._failed(TimeoutError("no answer in time") if isinstance(e, TimeoutError) else e)
        finally:
            self._discard()

    def abandon(self) -> None:
        self.closed = True
        self._discard()

    def _discard(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
        shutil.rmtree(self.staging, ignore_errors=True)


def _points_up_to(folder: str, step: int, log: Say) -> set[tuple[str, int]]:
    """The points (tag, step) at `step` or before that TensorBoard shows of the event files in
    `folder`: read in name order, each START dropping the points at or past its step."""
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog

    points: set[tuple[str, int]] = set()
    try:
        for name in storage.list_names(folder):  # sorted
            if "tfevents" in name and not name.startswith("."):  # not a temporary file (storage.py)
                for record in _records(storage.read_bytes(storage.join(folder, name))):
                    event = Event.FromString(record)
                    if event.session_log.status == SessionLog.START:
                        points = {(tag, at) for tag, at in points if at < event.step}
                    elif event.step <= step:
                        points.update((value.tag, event.step) for value in event.summary.value)
    except Exception as e:  # noqa: BLE001 - at worst a point is shown twice
        log(f"could not read the earlier TensorBoard files in {folder} ({e})")
    return points


def _records(data: bytes) -> list[bytes]:
    """The records of a TFRecord file (each: length (u64), its CRC (u32), the bytes, their CRC
    (u32)), up to the first one cut off."""
    records, at = [], 0
    while at + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, at)
        if at + 12 + length + 4 > len(data):
            break
        records.append(data[at + 12 : at + 12 + length])
        at += 12 + length + 4
    return records
