"""Every key the README says may change on resume, changed on a real resume, both ways.

Each case trains the real session in this process on MNIST-format files, is stopped by a
SIGTERM inside epoch 1 (exit 143, a checkpoint), and resumes with the key changed. The
resumed run must pick up at the step it stopped at and finish; where the change cannot
alter the arithmetic (where the data is, when to save, how many to keep, compiling,
`auto` meaning this CPU), its final weights must equal an uninterrupted run's, bit for bit.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from rich.console import Console

from runner.spec import load_spec
from runner.training import session
from runner.training.events import Listeners
from tests.helpers import JOBS, read_weights, same_tensors, write_mnist

BASE = ["device=cpu", "threads=1", "epochs=2", "batch_size=32", "model_options={channels=[4,8],hidden=16}"]
STOP_AT = 7  # of 17 steps an epoch (540 training images in batches of 32)

# (key, before, after, same arithmetic): each pair is run in both directions.
CHANGES = [
    ("precision", "fp32", "bf16", False),
    ("device", "cpu", "auto", True),
    ("threads", "1", "2", False),
    ("compile", "false", "true", True),
    ("checkpoint.every_steps", "0", "3", True),
    ("checkpoint.every_seconds", "300", "0", True),
    ("checkpoint.keep", "1", "3", True),
    ("data.root", "{a}", "{b}", True),
    ("data.download", "false", "true", True),
]
CASES = [(k, x, y, same) for k, a, b, same in CHANGES for x, y in ((a, b), (b, a))]


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The same MNIST files in two places (data.root may move between attempts)."""
    a = write_mnist(tmp_path_factory.mktemp("data-a"))
    b = tmp_path_factory.mktemp("data-b")
    shutil.copytree(a, b, dirs_exist_ok=True)
    return {"a": str(a), "b": str(b)}


def run(run_dir: Path, overrides: list[str], stop_at: int | None = None) -> tuple[int, str]:
    """`runner run` in this process; with `stop_at`, a SIGTERM after that step (as the kubelet sends)."""
    out = io.StringIO()
    spec = load_spec(str(JOBS / "cnn.toml"), [*BASE, *overrides, f"checkpoint.dir={run_dir}"])
    step = Listeners.step

    def then_stop(listeners: Listeners, batch: int, running: object) -> None:
        step(listeners, batch, running)
        if stop_at is not None and batch == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Listeners, "step", then_stop)
        # compile = true, without a compiler's tens of seconds: the run's own logic, eagerly.
        patch.setattr(torch, "compile", lambda model, **_: model)
        code = session.run(spec, Console(file=out, width=200), quiet=True)
    return code, out.getvalue()


def setting(key: str, value: str, roots: dict[str, str]) -> list[str]:
    value = value.format(**roots)
    defaults = [f"data.root={roots['a']}", "data.download=false"]
    return [d for d in defaults if not d.startswith(f"{key}=")] + [f"{key}={value}"]


@pytest.fixture(scope="module")
def uninterrupted(roots: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    code, out = run(run_dir, setting("threads", "1", roots))
    assert code == 0, out
    return read_weights(run_dir / "final" / "model.safetensors")


@pytest.mark.parametrize(("key", "before", "after", "same"), CASES, ids=[f"{k}:{x}->{y}" for k, x, y, _ in CASES])
def test_a_key_that_may_change_on_resume_changes_on_a_real_resume(
    key: str, before: str, after: str, same: bool, roots: dict[str, str], uninterrupted: dict, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    code, out = run(run_dir, setting(key, before, roots), stop_at=STOP_AT)
    assert code == 143 and f"stopped by SIGTERM at step {STOP_AT}" in out, out
    code, out = run(run_dir, setting(key, after, roots))
    assert code == 0, out
    assert f"resumed from step {STOP_AT} (epoch 1, batch {STOP_AT})" in out and "done: test_acc" in out, out
    weights = read_weights(run_dir / "final" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    if same:
        assert same_tensors(weights, uninterrupted), f"{key} {before} -> {after} changed the arithmetic"
