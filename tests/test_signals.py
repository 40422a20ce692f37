from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path

import pytest
from rich.console import Console

from runner.rundir import layout
from runner.spec import load_spec
from runner.training import session
from runner.training.events import Listeners
from runner.training.signals import Preemption
from tests.helpers import JOBS


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
