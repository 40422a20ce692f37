"""Your own model end to end, from a file beside a spec in the test's folder, run from
another folder (so only the spec's `code` makes it importable): it trains, a killed run
resumes to the same weights bitwise (the resume itself is tested with many kills in
test_resume.py; here, that a user model comes back the same), it exports, and each way the code can be
wrong is one line and exit 2, at validate and at run start, before anything is written."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest

from tests.e2e.test_resume import SPEC, final_weights, killed_at_random_moments
from tests.helpers import JOBS, REPO, runner_cli, same_tensors

pytestmark = pytest.mark.slow

NETS = """\
from torch import nn


def small(input_shape, num_classes, hidden=32, dropout=0.25):
    c, h, w = input_shape
    return nn.Sequential(
        nn.Conv2d(c, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(dropout),
        nn.Linear(8 * ((h - 2) // 2) * ((w - 2) // 2), hidden), nn.ReLU(), nn.Linear(hidden, num_classes),
    )


def broken(input_shape, num_classes):
    raise RuntimeError("this net is not finished")


def not_a_module(input_shape, num_classes):
    return "a string"
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """project/job.toml (digits, the model from project/mynets.py) and an empty folder to run from."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "mynets.py").write_text(NETS)
    spec = (JOBS / "digits.toml").read_text()
    (folder / "job.toml").write_text(
        spec.replace('model = "cnn"', 'model = "mynets:small"\ncode = ["mynets.py"]\nmodel_options = {hidden = 16}')
    )
    (tmp_path / "elsewhere").mkdir()
    return folder


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_a_user_model_trains_resumes_bitwise_after_a_kill_and_exports(project: Path, tmp_path: Path) -> None:
    cwd, whole, one_epoch = tmp_path / "elsewhere", tmp_path / "whole", "--set=epochs=1"
    args = ("../project/job.toml", *SPEC, one_epoch, f"--set=checkpoint.dir={whole}", "--quiet")
    result = runner_cli("run", *args, cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "digits: mynets:small on digits" in result.stdout
    assert f'"{project / "mynets.py"}"' in (whole / "spec.toml").read_text()  # the saved spec finds it from anywhere
    # One epoch, a checkpoint every 3 steps. The helpers run jobs/digits.toml: the same job,
    # the code named by --set (an absolute path).
    code = f"--set=code=['{project / 'mynets.py'}']"
    user_model = ("--set=model=mynets:small", code, "--set=model_options.hidden=16", one_epoch)
    killed = tmp_path / "killed"
    killed_at_random_moments(str(killed), cwd, random.Random(3), kills_wanted=1, extra=user_model)
    assert same_tensors(final_weights(str(killed)), final_weights(str(whole)))

    # The use side rebuilds the model from the final weights' metadata, which say where the
    # code was. Moved away: one line naming where it was, and what to do.
    (project / "mynets.py").rename(tmp_path / "mynets.py")
    lost = runner_cli("export", str(whole), "-f", "safetensors", "-o", "model.st", cwd=cwd)
    assert lost.returncode == 2 and lost.stdout == "", lost.stdout + lost.stderr
    assert lost.stderr == (
        f"error: model: no module named 'mynets' (of mynets:small); the run's code ({project / 'mynets.py'}) "
        "is not on this machine: put its folder on PYTHONPATH\n"
    )
    # ... which is enough.
    path = os.pathsep.join([str(REPO), str(tmp_path)])
    exported = runner_cli("export", str(whole), "-f", "torchscript", "-o", "m.pt", cwd=cwd, env={"PYTHONPATH": path})
    assert exported.returncode == 0, exported.stderr
    import torch

    scripted = torch.jit.load(str(cwd / "m.pt"))
    assert scripted(torch.full((3, 1, 28, 28), 127.0)).shape == (3, 10)


def run_from_elsewhere(command: str, project: Path, *overrides: str) -> subprocess.CompletedProcess:
    cwd = project.parent / "elsewhere"
    sets = [f"--set={o}" for o in ("model_options={}", "device=cpu", "threads=1", *overrides)]
    return runner_cli(command, "../project/job.toml", *sets, cwd=cwd)


def one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stdout + result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    return result.stderr


@pytest.mark.parametrize(
    ("model", "error"),
    [
        ("nets:small", "model: no module named 'nets' (of nets:small); list its file or package in the spec's"),
        ("mynets:broken", "raised RuntimeError: this net is not finished ({nets}, line 13)\n"),
        ("mynets:not_a_module", "model: mynets:not_a_module returned builtins.str, not a torch.nn.Module\n"),
    ],
)
def test_bad_user_code_is_one_line_and_exit_2_at_validate(project: Path, model: str, error: str) -> None:
    result = run_from_elsewhere("validate", project, f"model={model}")
    assert error.format(nets=project / "mynets.py") in one_line(result)


def test_bad_user_code_at_run_start_writes_nothing(project: Path) -> None:
    run_dir = project.parent / "run"
    result = run_from_elsewhere("run", project, "model=mynets:broken", f"checkpoint.dir={run_dir}")
    assert "mynets:broken(input_shape=(1, 28, 28), num_classes=10, **model_options) raised" in one_line(result)
    assert not run_dir.exists()


def test_validate_builds_a_user_model_for_an_image_folder_at_the_specs_image_size(project: Path) -> None:
    # The folder's classes are counted only when its files load; the shape is the spec's.
    (project / "images").mkdir()
    (project / "job.toml").write_text(
        'name = "own"\nmodel = "mynets:small"\ncode = ["mynets.py"]\n'
        '[data]\ndataset = "imagefolder"\nroot = "images"\nimage_size = [20, 24]\nchannels = 1\n'
    )
    assert runner_cli("validate", "job.toml", cwd=project).returncode == 0
    (project / "mynets.py").write_text(
        NETS + "\n\ndef fixed(input_shape, num_classes):\n    return small((1, 28, 28), num_classes)\n"
    )
    result = runner_cli("validate", "job.toml", "--set=model=mynets:fixed", cwd=project)
    assert (result.returncode, result.stderr.count("\n")) == (2, 1), result.stderr
    assert "cannot take inputs of shape (2, 1, 20, 24)" in result.stderr


def test_an_option_the_factory_does_not_take_names_the_spec_and_model_options(project: Path) -> None:
    result = run_from_elsewhere("validate", project, "model_options.hiden=8")
    line = one_line(result)
    assert line.startswith("error: ../project/job.toml: model: mynets:small(") and "unexpected keyword argument" in line
    assert line.endswith("; check [model_options] against its parameters\n")
