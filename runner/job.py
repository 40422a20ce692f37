"""`runner run`: one job, start to finish, in this process.

Everything that can be wrong with the input (device, data, model, a checkpoint of
another job) is checked before the run directory is written, so bad input writes
nothing. A run directory with committed checkpoints is resumed from the newest one
that verifies.
"""

from __future__ import annotations

import signal
import time
import tomllib
from typing import TYPE_CHECKING, Any

from rich.console import Console

from runner import storage
from runner.errors import RunFailed, UserError
from runner.rundir import FINAL_WEIGHTS, RunDir, weights_metadata
from runner.spec import JobSpec, resume_conflicts, to_toml

if TYPE_CHECKING:
    from runner.checkpoint import CheckpointStore, Entry
    from runner.checkpointer import Checkpointer
    from runner.engine import Trainer, TrainState
    from runner.heartbeat import Heartbeat
    from runner.signals import Preemption

PREEMPTED = 143  # 128 + SIGTERM: "stopped, checkpoint saved"; Kubernetes retries it
CLAIM_TRIES = 5


class _Recorder:
    """engine.Events: checkpoints when due, metrics.jsonl after every epoch, the display."""

    def __init__(
        self, run_dir: RunDir, state: TrainState, display: Any, checkpointer: Checkpointer, say: Any, log: Any
    ):
        self.run_dir, self.state, self.display, self.checkpointer = run_dir, state, display, checkpointer
        self.say, self.log = say, log  # log: to log.txt only (the display prints the epoch line itself)

    def epoch_start(self, epoch: int, batch: int, batches: int) -> None:
        self.display.epoch_start(epoch, batch, batches)

    def step(self, batch: int, running: Any) -> None:
        self.checkpointer.after_step(self.state.step)
        self.display.step(batch, running)

    def epoch_end(self, record: dict[str, Any]) -> None:
        try:
            self.run_dir.write_metrics(self.state.history)
        except Exception as e:  # the records live in the training state: next epoch writes them all
            self.say(f"could not write metrics.jsonl ({e}); training goes on, retrying next epoch")
        self.checkpointer.after_step(self.state.step, epoch_end=True)
        self.display.epoch_end(record)
        self.log(self.display.line(record))


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


def run(spec: JobSpec, console: Console, quiet: bool = False, fresh: bool = False, overwrite: bool = False) -> int:
    """Train `spec` (resuming if its run directory holds a checkpoint). Returns the exit code."""
    from runner.signals import Preemption

    # From the start: a SIGTERM while data loads is honoured at the first step, and one
    # during the final saves cannot cut them short.
    with Preemption() as preempted:
        trainer = build_trainer(spec)
        try:
            return _run(trainer, spec, console, quiet, fresh, overwrite, preempted)
        except OSError as e:  # the run directory's store, wherever it failed: a timeout, a full disk
            raise storage.failure(spec.checkpoint.dir, e) from None


def _run(
    trainer: Trainer, spec: JobSpec, console: Console, quiet: bool, fresh: bool, overwrite: bool, preempted: Preemption
) -> int:
    from runner.checkpoint import Fenced
    from runner.heartbeat import DONE, FAILED, Heartbeat
    from runner.heartbeat import PREEMPTED as STOPPED

    run_dir = RunDir(spec.checkpoint.dir)
    storage.check_reachable(run_dir.url)
    state = trainer.state
    heartbeat = Heartbeat(run_dir.url, lambda: {"epoch": state.epoch, "step": state.step})

    def say(message: str) -> None:
        console.print(message, highlight=False, markup=False)
        heartbeat.log(message)

    if fresh:
        _start_over(run_dir, overwrite)
    store, resumed = _prepare(trainer, spec, run_dir, say)
    info = {"name": spec.name, "epochs": spec.epochs, "steps_total": spec.epochs * trainer.batches}
    heartbeat.start(info, resumed=resumed is not None)
    try:
        code = _train(trainer, spec, run_dir, store, resumed, console, quiet, preempted, say, heartbeat)
    except Fenced:
        heartbeat.abandon()  # the run directory is another attempt's now: leave its status alone
        raise
    except BaseException as e:
        _end(heartbeat, FAILED, _first_line(e), console)
        raise
    if code == 0:
        _end(heartbeat, DONE, "", console)
    else:
        _end(heartbeat, STOPPED, f"stopped by {_signal_name(preempted.signum)} at step {state.step}", console)
    return code


def _prepare(trainer: Trainer, spec: JobSpec, run_dir: RunDir, say: Any) -> tuple[CheckpointStore, Entry | None]:
    """Claim the run directory and restore its newest checkpoint (or warm-start); write the spec."""
    from runner import checkpoint

    store = checkpoint.CheckpointStore(run_dir.url, spec.checkpoint.keep)
    if spec.init_from and not store.refresh():  # a resumed run keeps its own weights
        _warm_start(trainer, spec.init_from, run_dir, say)
    resumed = _claim_and_resume(store, trainer, spec, say)
    run_dir.write_spec(to_toml(spec))
    return store, resumed


def _train(
    trainer: Trainer,
    spec: JobSpec,
    run_dir: RunDir,
    store: CheckpointStore,
    resumed: Entry | None,
    console: Console,
    quiet: bool,
    preempted: Preemption,
    say: Any,
    heartbeat: Heartbeat,
) -> int:
    """Train to the end (0) or to a stop signal (143, after a checkpoint)."""
    import torch

    from runner import checkpoint
    from runner.checkpointer import Checkpointer
    from runner.progress import ProgressDisplay

    state, spec_toml = trainer.state, to_toml(spec)
    say(
        f"{spec.name}: {spec.model} on {spec.data.dataset} "
        f"({len(trainer.train)} train / {len(trainer.val)} val / {len(trainer.test)} test) on "
        f"{trainer.placement.device}, {trainer.placement.precision}, {torch.get_num_threads()} CPU threads -> {run_dir.url}"
    )
    if resumed and state.epoch >= spec.epochs:
        say(f"already trained to epoch {state.epoch} (step {state.step}, {resumed.file}); evaluating again")
    elif resumed:
        say(f"resumed from step {state.step} (epoch {state.epoch + 1}, batch {state.batch}) of {resumed.file}")

    def snapshot() -> tuple[bytes, dict[str, int]]:
        position = {"epoch": state.epoch, "batch": state.batch, "step": state.step}
        return checkpoint.encode(state.state_dict(), spec_toml), position

    ckpt = spec.checkpoint
    checkpointer = Checkpointer(store, snapshot, ckpt.every_steps, ckpt.every_seconds, state.step, say)
    try:
        with ProgressDisplay(console, spec.epochs, quiet) as display:
            finished = trainer.fit(_Recorder(run_dir, state, display, checkpointer, say, heartbeat.log), preempted)
            test = trainer.evaluate(trainer.test, preempted) if finished else None
        if test is None:
            code = _emergency_save(checkpointer, state.step, preempted.signum, say)
            _flush_metrics(run_dir, say)  # after the checkpoint, which comes first in a grace period
            return code
        checkpointer.save_now(state.step, attempts=4)  # the final save fails loudly, never silently
    finally:
        checkpointer.close()
    test_loss, test_acc = test
    final = {"epoch": state.epoch, "step": state.step, "test_loss": test_loss, "test_acc": test_acc}
    run_dir.write_final(state.model.state_dict(), weights_metadata(spec, trainer.info))
    run_dir.write_metrics([*state.history, final], final=True)  # last: the final record means "done"
    say(f"done: test_acc {test_acc:.2%} (test_loss {test_loss:.4f}); weights at {run_dir.path(FINAL_WEIGHTS)}")
    return 0


def _end(heartbeat: Heartbeat, final_state: str, message: str, console: Console) -> None:
    try:
        heartbeat.close(final_state, message)
    except Exception as e:  # noqa: BLE001 - the run's outcome stands; only its status file is behind
        console.print(f"could not write status.json ({_first_line(e)}); `runner ls` will show the run as stale")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _signal_name(signum: int | None) -> str:
    return signal.Signals(signum).name if signum else "a signal"


def _warm_start(trainer: Trainer, init_from: str, run_dir: RunDir, say: Any) -> None:
    """Load another run's final weights into the fresh model (optimizer and position start anew)."""
    from runner.rundir import newest_finished_sibling

    source = newest_finished_sibling(run_dir.url) if init_from == "previous" else RunDir(init_from)
    if source is None:
        say("init_from = previous: no finished run beside this one yet; starting from scratch")
        return
    try:
        weights, _ = source.read_final()
    except FileNotFoundError:
        raise UserError(
            f"init_from: {source.path(FINAL_WEIGHTS)} does not exist; name a finished run directory"
        ) from None
    try:
        trainer.state.model.load_state_dict(weights)
    except RuntimeError as e:
        raise UserError(
            f"init_from: the weights in {source.url} do not fit this model: {str(e).splitlines()[0]}"
        ) from None
    say(f"initialised from {source.path(FINAL_WEIGHTS)}")


def _start_over(run_dir: RunDir, overwrite: bool) -> None:
    if not run_dir.looks_like_a_run():
        return
    if not overwrite:
        raise UserError(
            f"--fresh: {run_dir.url} already holds a run; add --overwrite to delete it and start over, "
            "or set checkpoint.dir to a new place"
        )
    run_dir.delete_run()


def _claim_and_resume(store: CheckpointStore, trainer: Trainer, spec: JobSpec, say: Any) -> Entry | None:
    """Become the run directory's writer and restore its newest valid checkpoint, if any."""
    from runner.storage import AlreadyExists

    for _ in range(CLAIM_TRIES):
        committed = store.refresh()
        found = store.newest_valid(say)
        if committed and found is None:
            raise UserError(
                f"checkpoint.dir: none of the {len(committed)} committed checkpoints in {store.dir} can be used "
                "(see above); start over with --fresh --overwrite"
            )
        if found is not None:
            conflicts = resume_conflicts(tomllib.loads(found[0]["spec"]), spec)
            if conflicts:
                raise UserError(
                    f"checkpoint.dir: {spec.checkpoint.dir} holds a checkpoint of a different job: "
                    f"{', '.join(conflicts)}; resume with the same values, choose another checkpoint.dir, "
                    "or start over with --fresh --overwrite"
                )
        try:
            store.claim(found[1].file if found else None)
        except AlreadyExists:
            continue  # another writer committed meanwhile: read its newest, then claim again
        if found is None:
            return None
        trainer.restore(found[0]["state"])
        return found[1]
    raise RunFailed(f"could not claim {store.dir}: another writer keeps committing to it")


def _flush_metrics(run_dir: RunDir, say: Any) -> None:
    try:
        run_dir.flush_metrics()
    except Exception as e:  # the checkpoint is saved: exit 143 all the same
        say(f"could not write metrics.jsonl ({e}); the resumed run writes it")


def _emergency_save(checkpointer: Checkpointer, step: int, signum: int | None, say: Any) -> int:
    started = time.perf_counter()
    entry = checkpointer.save_now(step)
    say(
        f"stopped by {_signal_name(signum)} at step {entry.step}: checkpoint ({entry.size / 1e6:.1f} MB) saved in "
        f"{time.perf_counter() - started:.2f} s; resubmit to resume"
    )
    return PREEMPTED
