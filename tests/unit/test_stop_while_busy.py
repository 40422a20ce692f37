"""A stop that has nothing to save does not wait: a SIGTERM while the first step compiles
(torch.compile took 20.7 s here, more than a GKE spot node's ~15 s) ends the run at once,
exit 143, and the run resumes from where it was."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console

from runner.spec import load_spec
from runner.training import session
from tests.helpers import JOBS

COMPILE_S = 30.0  # what the stand-in compiler takes on its first call: far longer than any test waits


def run_compiled(run_dir: Path, epochs: int, sigterm_after_s: float | None) -> tuple[int, str, float]:
    """`runner run` with compile = true, in this process; the first forward pass stands in for
    torch.compile's first-step compilation (Python code, as inductor's is). With
    `sigterm_after_s`, a SIGTERM that long into that compilation."""
    spec = load_spec(
        str(JOBS / "digits.toml"),
        ["device=cpu", "threads=1", "model=mlp", "model_options={}", "compile=true", f"epochs={epochs}",
         f"checkpoint.dir={run_dir}"],
    )  # fmt: skip

    def slow_compile(model: torch.nn.Module, **_: object):
        compiled = False

        def forward(x: torch.Tensor) -> torch.Tensor:
            nonlocal compiled
            if not compiled and sigterm_after_s is not None:
                threading.Timer(sigterm_after_s, os.kill, (os.getpid(), signal.SIGTERM)).start()
                deadline = time.monotonic() + COMPILE_S
                while time.monotonic() < deadline:  # busy compiling: the loop cannot poll the flag
                    time.sleep(0.01)
            compiled = True
            return model(x)

        return forward

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "compile", slow_compile)
        started = time.monotonic()
        code = session.run(spec, Console(file=out, width=10_000), quiet=True)
    return code, out.getvalue(), time.monotonic() - started


def test_a_stop_while_the_first_step_compiles_ends_at_once(tmp_path: Path) -> None:
    code, out, took = run_compiled(tmp_path / "run", epochs=1, sigterm_after_s=0.5)
    assert code == 143, out
    assert "stopped by SIGTERM at step 0: nothing trained since the start; resubmit to resume" in out
    assert took < COMPILE_S / 3, took  # did not wait for the compiler


def test_a_stop_while_a_resumed_run_compiles_keeps_its_checkpoint(tmp_path: Path) -> None:
    assert run_compiled(tmp_path / "run", epochs=1, sigterm_after_s=None)[0] == 0  # a finished epoch: step 21
    code, out, took = run_compiled(tmp_path / "run", epochs=2, sigterm_after_s=0.5)  # extended, then stopped
    assert code == 143 and took < COMPILE_S / 3, (took, out)
    assert "stopped by SIGTERM at step 21: nothing trained since the checkpoint at step 21" in out
    code, out, _ = run_compiled(tmp_path / "run", epochs=2, sigterm_after_s=None)
    assert code == 0 and "resumed from step 21 (epoch 2, batch 0)" in out, out
