"""TensorBoard's event files: how they reach the run directory (storage.append_bytes), how often
the training loss is logged, and the reader behaviour the resume design rests on (TensorBoard's
own reader, on real event files)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
import torch

from runner import storage
from runner.training import tensorboard
from runner.training.tensorboard import STEP_POINTS, step_interval


def test_a_local_event_file_grows_in_place_so_a_reader_holding_it_open_sees_it_grow(tmp_path: Path) -> None:
    # TensorBoard's data server keeps each event file open: a file replaced by a rename is one
    # it never reads.
    url = str(tmp_path / "tensorboard" / "events")
    storage.append_bytes(url, b"first", 0)
    with open(url, "rb") as reader:
        assert reader.read() == b"first"
        storage.append_bytes(url, b"first, second", 5)
        assert reader.read() == b", second"


def test_a_file_not_as_the_last_call_left_it_is_written_whole(tmp_path: Path) -> None:
    url = str(tmp_path / "events")
    storage.append_bytes(url, b"abc", 0)
    Path(url).write_bytes(b"abcX")  # an append that failed part-way
    storage.append_bytes(url, b"abcdef", 3)
    assert Path(url).read_bytes() == b"abcdef"
    Path(url).unlink()
    storage.append_bytes(url, b"abcdefgh", 6)
    assert Path(url).read_bytes() == b"abcdefgh"


def test_an_object_store_gets_the_whole_file_each_time() -> None:
    url = f"memory://runs/{uuid.uuid4().hex}/tensorboard/events"
    storage.append_bytes(url, b"first", 0)
    storage.append_bytes(url, b"first, second", 5)
    assert storage.read_bytes(url) == b"first, second"


def test_on_a_fuse_mount_that_refuses_appends_the_file_is_written_whole(fuse_dir: Path) -> None:
    # rclone without its write cache answers EPERM to an append (Colab's Drive mount is FUSE too).
    url = str(fuse_dir / "tensorboard" / "events")
    storage.append_bytes(url, b"first", 0)
    storage.append_bytes(url, b"first, second", 5)
    assert Path(url).read_bytes() == b"first, second"


@pytest.mark.parametrize(("steps", "every"), [(1, 1), (82, 1), (300, 1), (301, 2), (615, 5), (9380, 50), (10**6, 5000)])
def test_the_training_loss_is_logged_every_round_number_of_steps_a_few_hundred_times(steps: int, every: int) -> None:
    assert step_interval(steps) == every
    assert steps / every <= STEP_POINTS


def _event_file(folder: Path, name: str, purge_step: int | None, points: dict[int, float]) -> None:
    """An event file as torch's SummaryWriter writes it, under `name` in `folder`."""
    from torch.utils.tensorboard import SummaryWriter

    staging = folder.parent / f"staging-{name}"
    with SummaryWriter(str(staging), purge_step=purge_step) as writer:
        for step, value in points.items():
            writer.add_scalar("loss", value, step, new_style=True)
    folder.mkdir(exist_ok=True)
    shutil.move(next(staging.iterdir()), folder / name)


def _served(folder: Path) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from tensorboard.util.tensor_util import make_ndarray

    multiplexer = EventMultiplexer()
    multiplexer.AddRun(str(folder))
    multiplexer.Reload()
    return [(e.step, make_ndarray(e.tensor_proto).item()) for e in multiplexer.Tensors(str(folder), "loss")]


@pytest.mark.parametrize("first_start", [1, None], ids=["first-attempt-writes-a-start", "first-attempt-writes-none"])
def test_a_start_in_a_newer_file_purges_the_orphaned_steps_only_after_a_first_start(
    tmp_path: Path, first_start: int | None
) -> None:
    """The resume design (runner/training/tensorboard.py): attempt 1 logged steps 1-8 and was
    killed after the checkpoint at step 5; attempt 2 starts at step 6 with a START there.
    TensorBoard's reader drops steps 6-8 of the older file, but only if a START came before:
    it takes a run's first START for its beginning, not a restart. So every attempt writes one."""
    folder = tmp_path / "tensorboard"
    _event_file(folder, "events.out.tfevents.00000001.runner", first_start, {s: 1.0 for s in range(1, 9)})
    _event_file(folder, "events.out.tfevents.00000002.runner", 6, {s: 2.0 for s in range(6, 11)})
    served = _served(folder)
    if first_start is None:  # the orphans stay: steps 6, 7 and 8 twice
        assert [step for step, _ in served] == [1, 2, 3, 4, 5, 6, 7, 8, 6, 7, 8, 9, 10]
    else:
        assert served == [(s, 1.0) for s in range(1, 6)] + [(s, 2.0) for s in range(6, 11)]


def _attempt(folder: Path, seq: int, start: int, evaluated: bool, finished: bool) -> None:
    """One attempt of a 4-step, 1-epoch run from step `start`, with the real listener: its steps,
    the epoch's evaluation if `evaluated`, the test results if `finished`."""
    from torch import nn
    from torch.utils.tensorboard import SummaryWriter

    from runner.training.engine import TrainState
    from runner.training.tensorboard import TensorBoard

    model = nn.Linear(2, 2)
    state = TrainState(model, torch.optim.SGD(model.parameters()), torch.amp.GradScaler("cpu", enabled=False))
    state.step = state.batch = start
    hparams = {"lr": 0.1, "model": "linear"}
    board = TensorBoard(SummaryWriter, str(folder), f"events.out.tfevents.{seq:08d}.runner", hparams, state, 4,
                        lambda: -1, print, print)  # fmt: skip
    board.epoch_start(0, state.batch, 4)
    while state.batch < 4:
        state.step = state.batch = state.batch + 1
        state.running.add(torch.tensor(float(state.step)), torch.tensor(1), 1)  # step s's loss: s
        board.step(state.batch, state.running)
    if evaluated:
        board.epoch_end({"epoch": 1, "step": 4, "train_loss": 2.5, "val_acc": 0.5})
    if finished:
        board.end({"epoch": 1, "step": 4, "test_loss": 0.1, "test_acc": 0.9})
    board.close()


@pytest.mark.parametrize("evaluated", [True, False], ids=["epoch-logged-before-the-kill", "epoch-not-logged"])
def test_points_an_earlier_attempt_logged_at_a_resumed_attempts_first_step_are_not_logged_twice(
    tmp_path: Path, evaluated: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resumed from a checkpoint taken after an epoch's last step (4) but before its evaluation,
    an attempt evaluates that epoch again and logs its record at step 4, which its START (at
    5) keeps: the attempt before it may have logged it already. Hyperparameters are logged at
    step 0 by the first attempt alone."""
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from tensorboard.util.tensor_util import make_ndarray

    monkeypatch.setattr(tensorboard, "MIN_INTERVAL_S", 0.0)  # GCS's pace: a local folder need not wait
    folder = tmp_path / "tensorboard"
    _attempt(folder, 1, start=0, evaluated=evaluated, finished=False)  # then killed
    _attempt(folder, 2, start=4, evaluated=True, finished=True)
    multiplexer = EventMultiplexer()
    multiplexer.AddRun(str(folder))
    multiplexer.Reload()
    steps = {
        tag: [e.step for e in multiplexer.Tensors(str(folder), tag)]
        for tag in multiplexer.Runs()[str(folder)]["tensors"]
    }
    assert steps == {
        "step/train_loss": [1, 2, 3, 4],
        "epoch/train_loss": [4],
        "epoch/val_acc": [4],
        "final/test_loss": [4],
        "final/test_acc": [4],
        "_hparams_/experiment": [0],
        "_hparams_/session_start_info": [0],
        "_hparams_/session_end_info": [4],
    }
    losses = [make_ndarray(e.tensor_proto).item() for e in multiplexer.Tensors(str(folder), "step/train_loss")]
    assert losses == [1.0, 2.0, 3.0, 4.0]  # each step's own loss, not the epoch's running mean
