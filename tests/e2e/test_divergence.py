"""A run whose loss diverges stops with exit 3 and never saves a non-finite state over a
finite one (DeepFilterNet #30); whatever it leaves is valid JSON, null for a number that
is not finite (Python writes bare NaN, which JSON.parse, jq and Go refuse)."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import pytest
import torch
from rich.console import Console

from runner.rundir.layout import RunDir
from runner.spec import load_spec
from runner.training import session
from runner.training.events import Listeners
from tests.helpers import JOBS, runner_cli

DIVERGING = ["--set=model=mlp", "--set=model_options={}", "--set=optimizer=sgd", "--set=lr=1e6", "--set=epochs=2"]


def strict(text: str) -> object:
    """Parse as a strict JSON parser does: NaN, Infinity and -Infinity are errors."""

    def refuse(token: str) -> None:
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def diverged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    cwd = tmp_path_factory.mktemp("diverged")
    result = runner_cli(
        "run", str(JOBS / "digits.toml"), *DIVERGING, "--set=threads=1", "--set=checkpoint.every_steps=3",
        "--set=checkpoint.dir=runs/x", "--quiet", cwd=cwd,
    )  # fmt: skip
    return cwd, result


def test_sgd_at_lr_1e6_stops_with_exit_3_and_saves_nothing(diverged: tuple[Path, object]) -> None:
    cwd, result = diverged
    assert result.returncode == 3, result.stdout + result.stderr
    assert "diverged: the training loss is not finite at step 3 (epoch 1); nothing was saved" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    run = cwd / "runs" / "x"
    assert not (run / "final").exists() and RunDir(str(run)).checkpoint_index().refresh() == []
    status = strict((run / "status.json").read_text())
    assert status["state"] == "failed" and status["message"].startswith("diverged: "), status


@pytest.mark.parametrize("command", [["status", "runs/x"], ["ls"]])
def test_json_output_of_a_diverged_run_parses_strictly(command: list[str], diverged: tuple[Path, object]) -> None:
    result = runner_cli(*command, "--json", cwd=diverged[0])
    assert result.returncode == 0, result.stderr
    strict(result.stdout)


POISONED = 30


def test_weights_that_blow_up_mid_run_never_overwrite_the_last_finite_checkpoint(tmp_path: Path) -> None:
    overrides = ["device=cpu", "threads=1", "epochs=2", "model=mlp", "model_options={}", "checkpoint.every_steps=5"]
    spec = load_spec(str(JOBS / "digits.toml"), [*overrides, f"checkpoint.dir={tmp_path / 'run'}"])
    step = Listeners.step

    def poisoned(listeners: Listeners, batch: int, running: object) -> None:
        state = next(x for x in listeners.listeners if hasattr(x, "state")).state
        if state.step == POISONED:  # in epoch 2, after checkpoints of finite weights
            torch.nn.init.constant_(next(iter(state.model.parameters())), math.inf)
        step(listeners, batch, running)

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Listeners, "step", poisoned)
        code = session.run(spec, Console(file=out, width=10_000), quiet=True)
    assert code == 3, out.getvalue()
    # Found at the next save (when, depends on the background upload) or the epoch's end.
    found = re.search(r"diverged: the (?:weights are|training loss is) not finite at step (\d+) \(epoch 2\); "
                      r"the newest checkpoint \(step (\d+)\) is the last finite state", out.getvalue())  # fmt: skip
    assert found, out.getvalue()
    detected, kept = int(found[1]), int(found[2])
    assert 21 <= kept < POISONED <= detected
    index = RunDir(str(tmp_path / "run")).checkpoint_index()
    newest = index.refresh()[0]
    weights = index.load(newest)["state"]["model"]
    assert newest.step == kept and all(torch.isfinite(w).all() for w in weights.values())
    records = [strict(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1]


def test_what_runner_writes_as_json_has_null_for_a_number_that_is_not_finite(tmp_path: Path) -> None:
    from runner.cli.output import to_json

    run_dir = RunDir(str(tmp_path))
    run_dir.write_metrics([{"epoch": 1, "train_loss": math.nan, "val_loss": math.inf, "lr": 0.1}], final=True)
    run_dir.write_status({"state": "failed", "loss": -math.inf})
    assert strict((tmp_path / "metrics.jsonl").read_text())["train_loss"] is None
    assert strict((tmp_path / "status.json").read_text())["loss"] is None
    assert strict(to_json({"last_epoch": {"val_loss": math.nan}, "rows": [1.0, math.nan]})) == {
        "last_epoch": {"val_loss": None},
        "rows": [1.0, None],
    }


def test_weights_non_finite_after_the_last_step_while_the_loss_was_finite_end_3_with_nothing_written(
    tmp_path: Path,
) -> None:
    """The check of the weights themselves (not the loss's) at the final save: exit 3, no
    final weights, no checkpoint of non-finite weights. The weights turn once the last
    epoch's listeners have run, so the epoch's save (committed, or still owed when step 20's
    upload was in flight) was taken of finite weights, and only the final save can see it."""
    overrides = ["device=cpu", "threads=1", "epochs=1", "model=mlp", "model_options={}", "checkpoint.every_steps=5"]
    spec = load_spec(str(JOBS / "digits.toml"), [*overrides, f"checkpoint.dir={tmp_path / 'run'}"])
    epoch_end = Listeners.epoch_end

    def poisoned(listeners: Listeners, record: dict) -> None:
        epoch_end(listeners, record)  # the loss, the epoch's record and its save: all finite
        state = next(x for x in listeners.listeners if hasattr(x, "state")).state
        torch.nn.init.constant_(next(iter(state.model.parameters())), math.nan)

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Listeners, "epoch_end", poisoned)
        code = session.run(spec, Console(file=out, width=10_000), quiet=True)
    assert code == 3, out.getvalue()
    assert "diverged: the weights are not finite at step 21 (epoch 1)" in out.getvalue(), out.getvalue()
    assert not (tmp_path / "run" / "final").exists()
    index = RunDir(str(tmp_path / "run")).checkpoint_index()
    entries = index.refresh()
    assert entries and entries[0].step in (20, 21), entries
    for entry in entries:
        assert all(torch.isfinite(w).all() for w in index.load(entry)["state"]["model"].values()), entry
