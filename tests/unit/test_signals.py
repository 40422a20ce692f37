from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from runner.rundir import layout
from runner.spec import load_spec
from runner.training import session
from runner.training.events import Listeners
from runner.training.signals import Preemption
from tests.helpers import JOBS, read_weights, same_tensors


def test_sigterm_or_sigint_sets_the_flag_and_a_second_sigint_aborts() -> None:
    with Preemption() as preempted:
        assert not preempted()
        os.kill(os.getpid(), signal.SIGTERM)
        assert preempted() and preempted.signum == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)  # a repeated SIGTERM changes nothing
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


def test_a_stop_right_after_a_quick_epoch_still_leaves_that_epochs_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Epochs shorter than the metrics rate limit (a small model on a GPU): the second epoch's
    # write is held back, and a SIGTERM just after it must not lose it from metrics.jsonl.
    monkeypatch.setattr(layout, "METRICS_MIN_INTERVAL_S", 2.0)
    epoch_end = Listeners.epoch_end

    def then_preempted(listeners: Listeners, record: dict) -> None:
        epoch_end(listeners, record)
        if record["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # as the kubelet would, between two steps

    monkeypatch.setattr(Listeners, "epoch_end", then_preempted)
    overrides = ["model=mlp", "model_options={}", "epochs=3", "threads=1", "device=cpu", f"checkpoint.dir={tmp_path}"]
    spec = load_spec(str(JOBS / "digits.toml"), overrides)
    assert session.run(spec, Console(file=io.StringIO()), quiet=True) == 143
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]


SMALL = ["device=cpu", "threads=1", "batch_size=32", "model_options={channels=[8,16],hidden=64}"]
STEPS_PER_EPOCH = 41  # 1294 training digits in batches of 32


# -- a SIGTERM during the final test-split evaluation ----------------------------------------


def run_in_process(run_dir: Path, console_out: io.StringIO) -> int:
    from runner.spec import load_spec
    from runner.training import session

    spec = load_spec(str(JOBS / "digits.toml"), [*SMALL, "epochs=1", f"checkpoint.dir={run_dir}"])
    return session.run(spec, Console(file=console_out, soft_wrap=True, width=200), quiet=True)


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_sigterm_during_the_final_test_evaluation_saves_exits_143_and_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutation: training/session.py `Session._train` calls `trainer.evaluate(trainer.test)` (the stop ignored):
    the run then exits 0 with final weights instead of 143."""
    from runner.rundir.layout import RunDir
    from runner.training.engine import Trainer

    original = Trainer.evaluate
    calls: list[tuple[str, int | None]] = []

    def sigterm_in_test_evaluation(self: Trainer, split: Any, stop: Any = lambda: False) -> Any:
        which = "test" if split is self.test else "val" if split is self.val else "other"
        if which == "test":
            os.kill(os.getpid(), signal.SIGTERM)  # os.kill runs the Python handler before it returns
            handler = signal.getsignal(signal.SIGTERM)
            calls.append((which, getattr(getattr(handler, "__self__", None), "signum", None)))
        else:
            calls.append((which, None))
        return original(self, split, stop)

    monkeypatch.setattr(Trainer, "evaluate", sigterm_in_test_evaluation)
    stopped_dir, out = tmp_path / "stopped", io.StringIO()
    code = run_in_process(stopped_dir, out)
    # The signal was handled (by the run's Preemption) before the test evaluation began.
    assert calls == [("val", None), ("test", signal.SIGTERM)], calls
    assert code == 143, out.getvalue()
    assert f"stopped by SIGTERM at step {STEPS_PER_EPOCH}" in out.getvalue(), out.getvalue()
    assert "done: test_acc" not in out.getvalue()
    assert not (stopped_dir / "final" / "model.safetensors").exists()
    assert not (stopped_dir / "final").exists()
    records = metrics(stopped_dir)
    assert [r["epoch"] for r in records] == [1] and all("test_acc" not in r for r in records)
    assert RunDir(str(stopped_dir)).checkpoint_index().refresh()[0].step == STEPS_PER_EPOCH
    assert json.loads((stopped_dir / "status.json").read_text())["state"] == "preempted"

    monkeypatch.undo()
    resumed_out = io.StringIO()
    assert run_in_process(stopped_dir, resumed_out) == 0, resumed_out.getvalue()
    assert f"already trained to epoch 1 (step {STEPS_PER_EPOCH}" in resumed_out.getvalue()
    final_records = metrics(stopped_dir)
    assert [r["epoch"] for r in final_records] == [1, 1] and "test_acc" in final_records[-1]

    reference_dir, reference_out = tmp_path / "straight", io.StringIO()
    assert run_in_process(reference_dir, reference_out) == 0, reference_out.getvalue()
    assert same_tensors(
        read_weights(stopped_dir / "final" / "model.safetensors"),
        read_weights(reference_dir / "final" / "model.safetensors"),
    )
    assert final_records[-1] == metrics(reference_dir)[-1]  # the same test loss and accuracy, exactly


def test_a_second_ctrl_c_during_the_emergency_save_aborts_and_the_status_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runner.training.checkpointer import Checkpointer

    save_now = Checkpointer.save_now
    step = Listeners.step

    def ctrl_c_at_step_5(listeners: Listeners, batch: int, running: object) -> None:
        step(listeners, batch, running)
        if batch == 5:  # mid-epoch, 5 steps past the start: there is something to save
            os.kill(os.getpid(), signal.SIGINT)

    def impatient(checkpointer: Checkpointer, *args: Any, **kwargs: Any) -> Any:
        os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, while the first one's checkpoint is saved
        return save_now(checkpointer, *args, **kwargs)

    monkeypatch.setattr(Listeners, "step", ctrl_c_at_step_5)
    monkeypatch.setattr(Checkpointer, "save_now", impatient)
    overrides = ["model=mlp", "model_options={}", "epochs=1", "threads=1", "device=cpu", f"checkpoint.dir={tmp_path}"]
    spec = load_spec(str(JOBS / "digits.toml"), overrides)
    with pytest.raises(KeyboardInterrupt):
        session.run(spec, Console(file=io.StringIO()), quiet=True)
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "aborted" and status["message"].startswith("aborted by a second SIGINT at step 5")


# `runner submit`'s child as it is while its interpreter starts: no handler for a stop yet.
STARTING_CHILD = """
import subprocess, sys
from runner.backends import local
from runner.backends.api import Submission
from runner.spec import load_spec

local.run_command = lambda job: [sys.executable, "-c", "print('child up', flush=True); import time; time.sleep(60)"]
spec = load_spec(sys.argv[1], ["device=cpu"])
sys.exit(local.LocalBackend().submit(Submission(sys.argv[1], (), spec)))
"""


def test_a_stop_before_submits_child_has_a_handler_ends_143_with_the_one_line(tmp_path: Path) -> None:
    # Seen in CI: a SIGTERM 0.3 s into `runner submit`, passed on to a `runner run` still
    # importing, killed it by the signal; submit exited 143 without a word.
    proc = subprocess.Popen(
        [sys.executable, "-c", STARTING_CHILD, str(JOBS / "digits.toml")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout.readline() == "child up\n"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    last = err.strip().splitlines()[-1] if err.strip() else ""
    assert last.startswith("stopped by SIGTERM while starting, before training"), err
