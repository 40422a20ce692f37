"""`runner run`: one job, start to finish, in this process.

A `Session` owns what one process of a run has: the spec, the run directory, the
log, and its place in the job (`Rank`). It wires the engine's events to listeners
(the progress display, metrics.jsonl, checkpoints, TensorBoard, log.txt), which only the
writing process (rank 0) is given.

Everything that can be wrong with the input (device, data, model, a checkpoint of
another job) is checked before the run directory is written, so bad input writes
nothing. A run directory with committed checkpoints is resumed from the newest one
that verifies.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.console import Console

from runner import storage
from runner.errors import Diverged, Exit, PeerLost, RunFailed, UserError
from runner.rundir import heartbeat
from runner.rundir.layout import FINAL_WEIGHTS, RunDir, weights_metadata
from runner.spec import JobSpec, check_global_batch, to_toml
from runner.timebox import call_by
from runner.training.library_logs import library_logs_to
from runner.training.progress import show
from runner.training.promotion import check_promotable, promote_after_training
from runner.training.ranks import Rank
from runner.training.signals import StopNow

if TYPE_CHECKING:
    from runner.rundir.checkpoints import Entry
    from runner.rundir.writer import CheckpointWriter
    from runner.training.checkpointer import Checkpointer
    from runner.training.engine import Trainer, TrainState
    from runner.training.signals import Preemption


def build_trainer(spec: JobSpec, rank: Rank = Rank()) -> Trainer:
    """Device, data and model for `spec`, for process `rank`: every check of the input that needs torch."""
    import torch

    from runner.data.datasets import load_dataset
    from runner.device import select
    from runner.models.registry import build_model
    from runner.training.engine import Trainer

    placement = select(spec.device, spec.precision, spec.threads, rank.local_rank, rank.local_world_size)
    d = spec.data
    data = load_dataset(d.dataset, d.root, d.download, d.val_fraction, spec.seed, d.options())
    torch.manual_seed(spec.seed)  # seeds the weights and dropout (CPU and every GPU)
    model = build_model(spec.model, spec.model_options, data.info.shape, data.info.num_classes, spec.code)
    return Trainer(spec, model, data, placement, augment=spec.data.augment)


def run(spec: JobSpec, console: Console, quiet: bool = False, fresh: bool = False, overwrite: bool = False) -> int:
    """Train `spec` (resuming if its run directory holds a checkpoint). Returns the exit code:
    0 done, 143 stopped by a signal after a checkpoint. Raises UserError (bad input, before
    anything is written) and RunFailed."""
    from runner.training.signals import Preemption

    rank = _rank(spec)
    # From the start: a SIGTERM while data loads is honoured at the first step, and one
    # during the final saves cannot cut them short.
    with Preemption() as preempted:
        trainer = build_trainer(spec, rank)
        session = Session(spec, rank, console)
        try:
            return session.run(trainer, preempted, quiet, fresh, overwrite)
        except OSError as e:  # the run directory's store, wherever it failed: a timeout, a full disk
            raise storage.failure(spec.checkpoint.dir, e, "checkpoint.dir") from None


def _rank(spec: JobSpec) -> Rank:
    """This process's place in the job, as its launcher (torchrun, or none) says."""
    try:
        rank = Rank.detect()
    except ValueError as e:
        raise UserError(f"torchrun's environment: {e}") from None
    check_global_batch(spec.batch_size, rank.world_size, f"WORLD_SIZE={rank.world_size} (torchrun's)")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if rank.world_size > 1 and not os.environ.get(name)]
    if missing:
        raise UserError(
            f"torchrun's environment: WORLD_SIZE={rank.world_size} but no {' or '.join(missing)}, so the processes "
            "cannot meet; start them with torchrun (runner submit and runner launch do)"
        )
    return rank


# Of the grace period a stop signal starts (resources.grace_seconds), the emergency save may
# use all but SAVE_MARGIN_S; the status write and the flush of metrics all but END_MARGIN_S,
# which is left for the process to exit (0.3-0.5 s measured; see README, Performance).
SAVE_MARGIN_S, END_MARGIN_S = 3.0, 1.0


class Session:
    """One process's part in a run: the spec, the run directory, the log, the rank."""

    def __init__(self, spec: JobSpec, rank: Rank, console: Console):
        self.spec, self.rank, self.console = spec, rank, console
        self.run_dir = RunDir(spec.checkpoint.dir)
        self.heartbeat: heartbeat.Heartbeat | None = None  # the writer's status.json and log.txt
        self.stopping_by: float | None = None  # once stopped by a signal: when the last writes must end
        self.note = ""  # what status.json says beside "done"

    def say(self, message: str) -> None:
        """A line for the person watching, and for log.txt (rank 0's; the others train quietly).

        The terminal may be gone (progress.show): then the line is in log.txt alone.
        """
        if self.rank.is_writer:
            self.log(message)
            show(self.console, message)

    def log(self, message: str) -> None:
        """A line for log.txt alone."""
        if self.heartbeat is not None:
            self.heartbeat.log(message)

    def run(self, trainer: Trainer, preempted: Preemption, quiet: bool, fresh: bool, overwrite: bool) -> int:
        with library_logs_to(self.log):
            return self._run(trainer, preempted, quiet, fresh, overwrite)

    def _run(self, trainer: Trainer, preempted: Preemption, quiet: bool, fresh: bool, overwrite: bool) -> int:
        from runner.rundir.writer import Fenced
        from runner.training import distributed, follower

        spec, state = self.spec, trainer.state
        writer, resumed = self._claim(trainer, fresh, overwrite) if self.rank.is_writer else (None, None)
        # Every input has been checked (rank 0 has read the run directory too): the processes
        # meet only now, so bad input ends a launch before any process group exists.
        group = distributed.join(self.rank, trainer.device)
        trainer.join(group)
        if group.world_size > 1:
            resumed = group.broadcast(resumed)
            if not self.rank.is_writer:
                follower.resume_like_rank_0(trainer, self.run_dir, resumed)
        # Until a step is trained past the newest checkpoint (or past the start), a stop loses
        # nothing: it need not wait for the step, or for the compiler compiling it. Not in a
        # group: one process leaving on its own would leave the others mid-step, to find it
        # gone (exit 75) instead of stopping with it at the next step's vote.
        start = resumed.step if resumed else state.step
        newest = lambda: writer.entries[0].step if writer and writer.entries else 0  # noqa: E731
        if group.world_size == 1:
            preempted.nothing_to_save = lambda: state.step == max(start, newest())
        stop = lambda: group.any(preempted())  # noqa: E731 - every process stops at the same step
        if writer is None:
            return follower.follow(trainer, stop)
        try:
            code = self._train(trainer, writer, resumed, quiet, preempted, stop)
        except PeerLost as e:
            self._end(heartbeat.PREEMPTED, str(e))
            raise
        except Fenced:
            self.heartbeat.abandon()  # the run directory is another attempt's now: leave its status alone
            raise
        except Diverged as e:
            code = self._diverged(e, writer)
        except StopNow:
            code = Exit.PREEMPTED
            self.stopping_by = (preempted.at or time.monotonic()) + spec.resources.grace_seconds - END_MARGIN_S
            self._flush_metrics()
            self.say(
                f"stopped by {_signal_name(preempted.signum)} at step {state.step}: nothing trained since "
                + (f"the checkpoint at step {state.step}" if state.step else "the start")
                + "; resubmit to resume"
            )
        except KeyboardInterrupt:  # a second Ctrl-C, during the emergency save or before the first stop
            self._end(heartbeat.ABORTED, f"aborted by a second SIGINT at step {state.step}; resubmit to resume")
            raise
        except BaseException as e:
            self._end(heartbeat.FAILED, _first_line(e))
            raise
        if code == Exit.DIVERGED:
            pass  # said and recorded by _diverged
        elif code == Exit.OK:
            self._end(heartbeat.DONE, self.note)
        else:
            self._end(heartbeat.PREEMPTED, f"stopped by {_signal_name(preempted.signum)} at step {state.step}")
        return code

    def _claim(self, trainer: Trainer, fresh: bool, overwrite: bool) -> tuple[CheckpointWriter, Entry | None]:
        """Rank 0: take the run directory and restore its newest checkpoint, if any (or warm-start).
        Returns the writer and the checkpoint resumed from."""
        from runner.training import resume

        spec, run_dir, state = self.spec, self.run_dir, trainer.state
        storage.check_reachable(run_dir.url, "checkpoint.dir")
        check_promotable(spec)
        self.heartbeat = heartbeat.Heartbeat(run_dir, lambda: {"epoch": state.epoch, "step": state.step})
        for note in trainer.notes:  # what loading the data did: downloads, skipped images
            self.say(note)
        if fresh:
            resume.start_over(run_dir, overwrite)
        writer = run_dir.checkpoint_writer(spec.checkpoint.keep)
        if spec.init_from and not writer.refresh():  # a resumed run keeps its own weights
            resume.warm_start(trainer, spec.init_from, run_dir, self.say)
        resumed = resume.claim_and_resume(writer, trainer, spec, self.say)
        run_dir.write_spec(to_toml(spec))
        info = {"name": spec.name, "epochs": spec.epochs, "steps_total": spec.epochs * trainer.batches}
        info["data"] = {**trainer.info.preprocessing.to_dict(), "fingerprint": trainer.fingerprint.to_dict()}
        self.heartbeat.start({**info, "world_size": self.rank.world_size}, resumed=resumed is not None)
        return writer, resumed

    def _train(
        self,
        trainer: Trainer,
        writer: CheckpointWriter,
        resumed: Entry | None,
        quiet: bool,
        preempted: Preemption,
        stop: Callable[[], bool],
    ) -> int:
        """Train to the end (0) or to a stop signal (143, after a checkpoint)."""
        import torch

        from runner.rundir.writer import Fenced, encode
        from runner.training.checkpointer import Checkpointer, on_colab, save_every_seconds
        from runner.training.distributed import peer_lost
        from runner.training.events import Listeners
        from runner.training.listeners import Checkpoints, LogFile, MetricsFile
        from runner.training.progress import ProgressDisplay
        from runner.training.tensorboard import open_board

        spec, run_dir, state = self.spec, self.run_dir, trainer.state
        spec_toml, preprocessing, data = to_toml(spec), trainer.info.preprocessing, trainer.fingerprint.to_dict()
        self.say(
            f"{spec.name}: {spec.model} on {spec.data.dataset} "
            f"({len(trainer.train)} train / {len(trainer.val)} val / {len(trainer.test)} test) on "
            f"{trainer.placement.device}, {trainer.placement.precision}, {(n := torch.get_num_threads())} CPU thread{'s' * (n != 1)} "
            f"-> {run_dir.url}"
        )
        if resumed and state.epoch >= spec.epochs:
            self.say(f"already trained to epoch {state.epoch} (step {state.step}, {resumed.file}); evaluating again")
        elif resumed:
            self.say(f"resumed from step {state.step} (epoch {state.epoch + 1}, batch {state.batch}) of {resumed.file}")

        def snapshot() -> tuple[bytes, dict[str, int]]:
            state.check_finite()  # never commit a diverged state over a finite one (DeepFilterNet #30)
            position = {"epoch": state.epoch, "batch": state.batch, "step": state.step}
            return encode(state.state_dict(), spec_toml, preprocessing.to_dict(), data), position

        ckpt = spec.checkpoint
        every_seconds = save_every_seconds(ckpt.every_seconds, "every_seconds" in ckpt.model_fields_set, on_colab())
        if every_seconds != ckpt.every_seconds:
            self.say(
                f"on Colab: a checkpoint every {every_seconds:.0f} s (checkpoint.every_seconds), as a disconnect gives no warning"
            )
        checkpointer = Checkpointer(writer, snapshot, ckpt.every_steps, every_seconds, state.step, self.say)
        board = open_board(run_dir, writer.seq, spec, trainer, lambda: checkpointer.last_step, self.say, self.log)
        try:
            with ProgressDisplay(self.console, spec.epochs, quiet) as display:
                # Rank 0 alone reports and writes; the others train. In the order things happen
                # at an epoch's end: its metrics, its checkpoint (TensorBoard copies its file when
                # one is taken), its line on screen, in log.txt.
                writes = [MetricsFile(run_dir, state, self.say), Checkpoints(checkpointer, state), board]
                listeners = Listeners([*writes, display, LogFile(self.log, spec.epochs)] if self.rank.is_writer else [])
                try:
                    finished = trainer.fit(listeners, stop)
                    test = trainer.evaluate(trainer.test, stop) if finished else None
                except Exception as e:
                    if (lost := peer_lost(e, state.step)) is None:
                        raise
                    self._save_what_is_left(checkpointer, state.step)
                    raise lost from None
            if test is None:
                grace = spec.resources.grace_seconds
                started = preempted.at if preempted.at is not None else time.monotonic()
                self.stopping_by = started + grace - END_MARGIN_S
                code = self._emergency_save(checkpointer, state.step, preempted.signum, started + grace - SAVE_MARGIN_S)
                self._flush_metrics()  # after the checkpoint, which comes first in a grace period
                return code
            preempted.nothing_to_save = lambda: False  # a stop from here on waits for the final saves
            unsaved = self._final_save(checkpointer, state)
            test_loss, test_acc = test
            final = {"epoch": state.epoch, "step": state.step, "test_loss": test_loss, "test_acc": test_acc}
            board.end(final)
        except (Fenced, KeyboardInterrupt):
            board.abandon()  # the run directory is another attempt's now, or a second Ctrl-C: no waiting
            raise
        finally:
            checkpointer.close(self.stopping_by)
            # Within the grace period of a stop signal, if one came: the checkpoint comes first.
            grace = preempted.at and preempted.at + spec.resources.grace_seconds - END_MARGIN_S
            board.close(self.stopping_by or grace)
        metadata = weights_metadata(
            spec.model, spec.model_options, spec.data.dataset, preprocessing, code=spec.code, data=data
        )
        # The weights are the run's result: they never depend on the final checkpoint.
        self._write_final(writer, state.model.state_dict(), metadata)
        self.say(f"done: test_acc {test_acc:.2%} (test_loss {test_loss:.4f}); weights at {run_dir.path(FINAL_WEIGHTS)}")
        if spec.promote.enabled:  # before the final record: a run is done once trained and gated
            decision = promote_after_training(spec, run_dir, trainer, self.say)
            final["promotion"], self.note = decision.to_json(), decision.line()
            self.say(self.note)
        run_dir.write_metrics([*state.history, final], final=True)  # last: the final record means "done"
        if unsaved is not None:
            newest = f"step {writer.entries[0].step}" if writer.entries else "the start"
            warning = f"the final checkpoint was not saved ({unsaved}); a larger epochs would resume from {newest}"
            self.note = "; ".join(filter(None, [self.note, warning]))
            self.say(f"warning: {warning}")
        return Exit.OK

    def _final_save(self, checkpointer: Checkpointer, state: TrainState) -> RunFailed | None:
        """The final checkpoint (what a larger `epochs` resumes from), retried; the error if it could not be saved
        (a full disk, once retention freed what it may), else None. Diverged (raised) writes neither."""
        from runner.rundir.writer import Fenced

        try:
            state.check_finite()  # also when the epoch's save, taken earlier, holds this step
            checkpointer.save_now(state.step, attempts=4)
        except (Fenced, Diverged):  # a diverged state is no result to keep, and not a full disk
            raise
        except RunFailed as e:
            return e
        return None

    def _write_final(self, writer: CheckpointWriter, weights: dict, metadata: dict[str, str]) -> None:
        try:
            self.run_dir.write_final(weights, metadata)
        except OSError as e:
            if not storage.out_of_space(e) or not writer.free_space():
                raise
            self.say(f"{self.run_dir.url} is full ({e.strerror}): kept only the newest checkpoint to write the weights")
            self.run_dir.write_final(weights, metadata)

    def _save_what_is_left(self, checkpointer: Checkpointer, step: int) -> None:
        """A peer is gone: save rank 0's state, which is the last step's on every rank (a step
        changes the state only after its collectives), so the re-formed group loses nothing."""
        deadline = time.monotonic() + self.spec.resources.grace_seconds - SAVE_MARGIN_S
        try:
            entry = checkpointer.save_now(step, deadline=deadline)
        except Exception as e:  # noqa: BLE001 - the newest checkpoint is still there to resume from
            self.say(f"a peer is gone, and the checkpoint at step {step} could not be saved: {_first_line(e)}")
            return
        self.say(f"a peer is gone: saved the checkpoint at step {entry.step}")

    def _diverged(self, error: Diverged, writer: CheckpointWriter) -> int:
        newest = writer.entries[0].step if writer.entries else None
        kept = (
            f"the newest checkpoint (step {newest}) is the last finite state"
            if newest is not None
            else "nothing was saved"
        )
        message = f"diverged: {error}; {kept}"
        self.say(
            f"{message}. Resuming would diverge again: lower lr (or change the optimizer or schedule) "
            "and start over with --fresh --overwrite"
        )
        self._flush_metrics()
        self._end(heartbeat.FAILED, message)
        return Exit.DIVERGED

    def _emergency_save(self, checkpointer: Checkpointer, step: int, signum: int | None, deadline: float) -> int:
        from runner.training.checkpointer import NotSavedInTime

        started = time.perf_counter()
        try:
            entry = checkpointer.save_now(step, deadline=deadline)
        except NotSavedInTime as e:
            entries = checkpointer.store.entries
            kept = f"the newest checkpoint is step {entries[0].step}" if entries else "there is no checkpoint yet"
            grace = self.spec.resources.grace_seconds
            raise RunFailed(
                f"stopped by {_signal_name(signum)} at step {step}, but {e} (resources.grace_seconds = {grace}); "
                f"{kept}: resubmitting resumes from there"
            ) from None
        self.say(
            f"stopped by {_signal_name(signum)} at step {entry.step}: checkpoint ({entry.size / 1e6:.1f} MB) saved in "
            f"{time.perf_counter() - started:.2f} s; resubmit to resume"
        )
        return Exit.PREEMPTED

    def _flush_metrics(self) -> None:
        try:
            call_by(self.stopping_by, self.run_dir.flush_metrics, name="metrics")
        except Exception as e:  # the checkpoint is saved: exit 143 all the same
            self.say(f"could not write metrics.jsonl ({e}); the resumed run writes it")

    def _end(self, final_state: str, message: str) -> None:
        assert self.heartbeat is not None
        try:
            self.heartbeat.close(final_state, message, deadline=self.stopping_by)
        except Exception as e:  # noqa: BLE001 - the run's outcome stands; only its status file is behind
            why = "no answer before the grace period ran out" if isinstance(e, TimeoutError) else _first_line(e)
            show(self.console, f"could not write status.json ({why}); `runner ls` will show the run as stale")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _signal_name(signum: int | None) -> str:
    return signal.Signals(signum).name if signum else "a signal"
