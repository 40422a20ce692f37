"""End to end through the real `runner` command, as a user types it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors import safe_open

from runner.spec import load_spec
from tests.helpers import JOBS, REPO, runner_cli

EPOCH_KEYS = {"epoch", "step", "train_loss", "val_loss", "val_acc", "samples_per_s", "lr"}


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_quickstart_trains_the_cnn_on_digits_to_95_percent(tmp_path: Path) -> None:
    result = runner_cli("submit", str(JOBS / "digits.toml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "digits"
    records = read_metrics(run_dir)
    epochs, final = records[:-1], records[-1]
    assert [r["epoch"] for r in epochs] == list(range(1, 16))
    assert all(EPOCH_KEYS <= r.keys() for r in epochs)
    assert final["test_acc"] >= 0.95
    assert f"test_acc {final['test_acc']:.2%}" in result.stdout
    with safe_open(run_dir / "final" / "model.safetensors", "pt") as f:
        assert f.metadata()["model"] == "cnn" and json.loads(f.metadata()["input_shape"]) == [1, 28, 28]
        assert f.get_tensor("head.5.weight").shape == (10, 128)
    assert load_spec(str(run_dir / "spec.toml")) == load_spec(str(JOBS / "digits.toml"))


def test_cnn_spec_trains_on_mnist_idx_files_under_data_root(tmp_path: Path, mnist_root: Path) -> None:
    result = runner_cli(
        "submit", str(JOBS / "cnn.toml"), "--set", f"data.root={mnist_root}", "--set", "epochs=1", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "cnn"
    epoch, final = read_metrics(run_dir)
    assert EPOCH_KEYS <= epoch.keys() and epoch["epoch"] == 1 and epoch["step"] == 5  # 540 / 128
    assert final["test_acc"] > 0.3  # 200 test digits; chance is 0.1
    resolved = load_spec(str(run_dir / "spec.toml"))
    assert resolved.epochs == 1 and resolved.data.root == str(mnist_root)
    assert (run_dir / "final" / "model.safetensors").stat().st_size > 0


@pytest.mark.parametrize("force_color", ["", "1"], ids=["plain", "FORCE_COLOR=1, as a Jupyter kernel sets it"])
def test_output_off_a_terminal_is_plain_lines(tmp_path: Path, force_color: str) -> None:
    env = {"FORCE_COLOR": force_color} if force_color else None
    result = runner_cli("run", str(JOBS / "digits.toml"), "--set", "epochs=2", "--set", "model=mlp",
                        "--set", "model_options={}", cwd=tmp_path, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    # No progress bar: no cursor codes (colours are what FORCE_COLOR asks for).
    assert "\x1b[?25l" not in result.stdout and "\x1b[2K" not in result.stdout, result.stdout
    assert force_color or "\x1b[" not in result.stdout  # and without it, no colour codes either
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in result.stdout.splitlines()]
    assert lines[1].startswith("epoch 1/2  step 21  train_loss ") and "samples/s" in lines[1]
    assert lines[-1].startswith("done: test_acc ")


def test_validate_and_help_do_not_import_torch() -> None:
    code = (
        "import sys; from runner.cli import app; from runner.spec import load_spec; "
        f"load_spec({str(JOBS / 'cnn.toml')!r}); load_spec({str(JOBS / 'cifar10.toml')!r}); "  # resnet18 too
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_validate_prints_the_resolved_spec(tmp_path: Path) -> None:
    result = runner_cli("validate", str(JOBS / "cnn.toml"), "--set", "epochs=2", "--show", cwd=tmp_path)
    assert result.returncode == 0
    (tmp_path / "resolved.toml").write_text(result.stdout)
    assert load_spec(str(tmp_path / "resolved.toml")).epochs == 2
    assert not (tmp_path / "runs").exists()


def test_submit_forwards_sigterm_to_the_training_process(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "submit", str(JOBS / "digits.toml"), "--set", "epochs=100", "--quiet"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # so the signal reaches `submit` alone, as kubelet's would
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "runs/digits/metrics.jsonl").exists():  # training is under way
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM  # the child got it, and died of it


MLP = ["--set", "model=mlp", "--set", "model_options={}", "--set", "threads=1", "--quiet"]


def test_resubmitting_resumes_extends_and_refuses_another_job(tmp_path: Path) -> None:
    spec = str(JOBS / "digits.toml")
    first = runner_cli("submit", spec, *MLP, "--set", "epochs=1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    records = tmp_path / "runs/digits/checkpoints/commits"
    before = sorted(p.name for p in records.iterdir())

    changed = runner_cli("submit", spec, *MLP, "--set", "epochs=1", "--set", "batch_size=32", cwd=tmp_path)
    assert changed.returncode == 2
    assert "holds a checkpoint of a different job: batch_size (64 -> 32)" in changed.stderr
    assert sorted(p.name for p in records.iterdir()) == before  # refused before writing anything

    longer = runner_cli("submit", spec, *MLP, "--set", "epochs=2", cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr
    assert "resumed from step 21 (epoch 2, batch 0)" in longer.stdout
    assert [r.get("epoch") for r in read_metrics(tmp_path / "runs/digits")] == [1, 2, 2]  # two epochs + final

    (tmp_path / "runs/digits/notes.txt").write_text("mine")  # not the run's: --overwrite must spare it
    refused = runner_cli("submit", spec, *MLP, "--fresh", cwd=tmp_path)
    assert refused.returncode == 2 and "add --overwrite" in refused.stderr
    again = runner_cli("submit", spec, *MLP, "--set", "epochs=1", "--fresh", "--overwrite", cwd=tmp_path)
    assert again.returncode == 0 and "resumed" not in again.stdout
    assert len(read_metrics(tmp_path / "runs/digits")) == 2
    assert (tmp_path / "runs/digits/notes.txt").read_text() == "mine"

    status = runner_cli("status", "runs/digits", "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["state"] == "done" and info["epoch"] == 1 and [c["step"] for c in info["checkpoints"]] == [21]
    assert info["resumes"] == 0  # --fresh --overwrite started a new run: status.json went too


def test_init_from_previous_warm_starts_a_new_run_from_the_newest_finished_one(tmp_path: Path) -> None:
    spec = str(JOBS / "digits.toml")
    args = [*MLP, "--set", "epochs=1", "--set", "init_from=previous"]
    first = runner_cli("submit", spec, *args, "--set", "checkpoint.dir=runs/nightly/a", cwd=tmp_path)
    assert first.returncode == 0 and "no finished run beside this one yet; starting from scratch" in first.stdout
    second = runner_cli("submit", spec, *args, "--set", "checkpoint.dir=runs/nightly/b", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "initialised from runs/nightly/a/final/model.safetensors" in second.stdout
    cold, warm = (read_metrics(tmp_path / f"runs/nightly/{r}")[0]["train_loss"] for r in "ab")
    assert warm < 0.8 * cold  # same seed: without the warm start the two would be identical

    missing = runner_cli(
        "submit", spec, *MLP, "--set", "init_from=runs/none", "--set", "checkpoint.dir=runs/c", cwd=tmp_path
    )
    assert missing.returncode == 2 and "init_from: runs/none/final/model.safetensors does not exist" in missing.stderr
    assert not (tmp_path / "runs/c").exists()
    wrong = runner_cli("submit", spec, *MLP, "--set", "model_options={hidden=[8]}", "--set", "init_from=runs/nightly/a",
                       "--set", "checkpoint.dir=runs/d", cwd=tmp_path)  # fmt: skip
    assert wrong.returncode == 2 and "do not fit this model" in wrong.stderr


# -- commands that must not import torch, run for real -------------------------------------

TORCH_PACKAGES = {"torch", "torchvision", "functorch", "torchaudio"}


def imported_modules(stderr: str) -> list[str]:
    """Module names from `python -X importtime` output: the last column of its lines."""
    return [line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding one finished run directory (a small MLP, one epoch)."""
    base = tmp_path_factory.mktemp("ls")
    result = subprocess.run(
        [sys.executable, "-m", "runner", "run", str(JOBS / "digits.toml"), "--set=epochs=1", "--set=model=mlp",
         "--set=model_options={}", "--set=threads=1", "--set=device=cpu", "--set=checkpoint.dir=runs/x", "--quiet"],
        cwd=base, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert (base / "runs" / "x" / "final" / "model.safetensors").exists()
    return base / "runs"


COMMANDS = {
    "validate-cnn": (["validate", "jobs/cnn.toml"], "ok: jobs/cnn.toml (cnn on mnist"),
    "validate-cifar10": (["validate", "jobs/cifar10.toml"], "ok: jobs/cifar10.toml (resnet18 on cifar10"),
    "help": (["--help"], "Usage:"),
    "ls": (["ls", "{runs}"], "state"),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_commands_that_do_not_train_import_no_torch(command: str, request: pytest.FixtureRequest) -> None:
    """Mutations: `import torch` at the top of runner/spec.py fails the validate cases;
    at the top of runner/rundir/summary.py fails ls; at the top of runner/cli/app.py fails all four."""
    args, expected = COMMANDS[command]
    if command == "ls":
        runs = request.getfixturevalue("finished_run")
        args = [a.format(runs=runs) for a in args]
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "runner", *args],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert expected in result.stdout, result.stdout
    modules = imported_modules(result.stderr)
    # The output is there to read (not vacuously empty): the command's own modules appear in it.
    assert "runner.cli" in modules and "typer" in modules, result.stderr[-3000:]
    if command == "ls":
        assert "runner.rundir.summary" in modules and "runner.rundir.checkpoints" in modules
        (row,) = [line for line in result.stdout.splitlines() if line.startswith(f"{args[1]}/x ")]
        assert row.split()[1:4] == ["done", "1/1", "21/21"], result.stdout  # the finished run, listed
    if command.startswith("validate"):
        assert "runner.spec" in modules
    torch_like = [m for m in modules if m.split(".")[0] in TORCH_PACKAGES]
    assert torch_like == [], f"{' '.join(args)} imported {sorted({m.split('.')[0] for m in torch_like})}"
