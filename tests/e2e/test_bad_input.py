"""Bad input exits 2 with one line naming what is wrong, no traceback, and writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import JOBS, runner_cli

GOOD = 'name = "job"\nmodel = "mlp"\nepochs = 1\n[data]\ndataset = "digits"\n'

# (spec text or bytes, extra CLI args, text the error must contain)
CASES = {
    "typo-key": (
        'name = "job"\nmodel = "mlp"\nepoch = 1\n[data]\ndataset = "digits"\n',
        [],
        "epoch: unknown key (did you mean 'epochs'?)",
    ),
    "typo-table-key": (
        'name = "job"\nmodel = "mlp"\n[data]\ndataset = "digits"\nrot = "/x"\n',
        [],
        "data.rot: unknown key (did you mean 'root'?)",
    ),
    "unknown-table": (GOOD + "[checkpont]\ndir = 'x'\n", [], "checkpont: unknown key (did you mean 'checkpoint'?)"),
    "wrong-type": (GOOD.replace("epochs = 1", 'epochs = "ten"'), [], "epochs: Input should be a valid integer"),
    "float-for-int": (GOOD.replace("epochs = 1", "epochs = 1.5"), [], "epochs: "),
    "out-of-range": (GOOD + "val_fraction = 1.5\n", [], "data.val_fraction: Input should be less than 1"),
    "negative-lr": (GOOD.replace("epochs = 1", "lr = -0.1"), [], "lr: Input should be greater than 0"),
    "zero-batch": (
        GOOD.replace("epochs = 1", "batch_size = 0"),
        [],
        "batch_size: Input should be greater than or equal to 1",
    ),
    "unknown-model": (GOOD.replace('"mlp"', '"cnnn"'), [], "model: unknown model 'cnnn' (did you mean 'cnn'?)"),
    "unknown-model-option": (
        GOOD + "[model_options]\nhiden = [32]\n",
        [],
        "model_options.hiden: unknown key (did you mean 'hidden'?)",
    ),
    "bad-model-option": (
        GOOD + "[model_options]\nhidden = [0]\n",
        [],
        "model_options.hidden.0: Input should be greater than 0",
    ),
    "unknown-dataset": (
        GOOD.replace('"digits"', '"mnsit"'),
        [],
        "data.dataset: unknown dataset 'mnsit' (did you mean 'mnist'?)",
    ),
    "unknown-device": (GOOD.replace("epochs = 1", 'device = "gpu"'), [], "device: unknown device 'gpu'"),
    "unknown-optimizer": (
        GOOD.replace("epochs = 1", 'optimizer = "adamm"'),
        [],
        "optimizer: Input should be 'adam', 'adamw' or 'sgd'",
    ),
    "bad-name": (GOOD.replace('"job"', '"My Job"'), [], "name: 'My Job' must be lowercase"),
    "missing-model": ('name = "job"\n[data]\ndataset = "digits"\n', [], "model: missing (required)"),
    "missing-data": ('name = "job"\nmodel = "mlp"\n', [], "data: missing (required)"),
    "invalid-toml": ('name = "job"\nmodel = \n', [], "invalid TOML: "),
    "duplicate-key": (GOOD.replace("epochs = 1", 'name = "again"'), [], "invalid TOML: "),
    "not-utf8": (b'name = "caf\xe9"\n', [], "not UTF-8 text"),
    "empty": ("", [], "the spec is empty"),
    "set-unknown-key": (GOOD, ["--set", "epoch=3"], "--set epoch=3: epoch: unknown key (did you mean 'epochs'?)"),
    "set-no-equals": (GOOD, ["--set", "epochs"], "--set epochs: expected KEY=VALUE"),
    "set-wrong-type": (GOOD, ["--set", "epochs=many"], "--set epochs=many: epochs: Input should be a valid integer"),
    "set-into-scalar": (GOOD, ["--set", "epochs.x=1"], "'epochs' is not a table"),
}


def _assert_clean_exit_2(result, expected: str, cwd: Path) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not (cwd / "runs").exists()


@pytest.mark.parametrize("command", ["submit", "run", "validate"])
def test_typo_is_rejected_by_every_command(command: str, tmp_path: Path) -> None:
    text, args, expected = CASES["typo-key"]
    (tmp_path / "job.toml").write_text(text)
    _assert_clean_exit_2(runner_cli(command, "job.toml", *args, cwd=tmp_path), expected, tmp_path)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_malformed_spec(case: str, tmp_path: Path) -> None:
    text, args, expected = CASES[case]
    spec = tmp_path / "job.toml"
    spec.write_bytes(text if isinstance(text, bytes) else text.encode())
    result = runner_cli("submit", "job.toml", *args, cwd=tmp_path)
    _assert_clean_exit_2(result, expected, tmp_path)
    origin = "--set " if args else "job.toml: "
    assert result.stderr.startswith(f"error: {origin}")  # names the file, or the override


def test_missing_spec_file(tmp_path: Path) -> None:
    _assert_clean_exit_2(runner_cli("submit", "nope.toml", cwd=tmp_path), "nope.toml: no such file", tmp_path)


def test_spec_path_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "dir.toml").mkdir()
    _assert_clean_exit_2(runner_cli("submit", "dir.toml", cwd=tmp_path), "dir.toml: cannot read the spec", tmp_path)


def test_unknown_cli_option_exits_2(tmp_path: Path) -> None:
    result = runner_cli("submit", str(JOBS / "digits.toml"), "--epochs", "3", cwd=tmp_path)
    assert result.returncode == 2 and "No such option" in result.stderr
    assert not (tmp_path / "runs").exists()


# Bad input only this machine can reveal: found after the spec validated, before the run dir.


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"RANK": "1", "WORLD_SIZE": "2"}, "torchrun's environment: WORLD_SIZE=2 but no MASTER_ADDR or MASTER_PORT"),
        ({"RANK": "3", "WORLD_SIZE": "2"}, "torchrun's environment: RANK=3, LOCAL_RANK=0 do not fit WORLD_SIZE=2"),
        (
            {"RANK": "0", "WORLD_SIZE": "3", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"},
            "WORLD_SIZE=3 (torchrun's): batch_size: 128 is the global batch, shared by 3 processes",
        ),
    ],
    ids=["no-rendezvous", "rank-out-of-range", "global-batch-not-divisible"],
)
def test_a_launch_across_processes_is_refused_before_anything_is_written(
    env: dict[str, str], expected: str, tmp_path: Path
) -> None:
    # Found before any process group starts (or any run directory is written).
    (tmp_path / "job.toml").write_text(GOOD)
    _assert_clean_exit_2(runner_cli("run", "job.toml", cwd=tmp_path, env=env), expected, tmp_path)


def test_cuda_without_a_gpu_is_bad_input_not_a_cpu_run(tmp_path: Path) -> None:
    (tmp_path / "job.toml").write_text(GOOD.replace("epochs = 1", 'device = "cuda"'))
    result = runner_cli("submit", "job.toml", cwd=tmp_path, env={"CUDA_VISIBLE_DEVICES": ""})
    _assert_clean_exit_2(result, "device: 'cuda' requested but this machine has no CUDA GPU", tmp_path)


def test_missing_dataset_names_both_ways_to_get_it(tmp_path: Path) -> None:
    spec = GOOD.replace('"digits"', '"mnist"') + 'root = "nowhere"\ndownload = false\n'
    (tmp_path / "job.toml").write_text(spec)
    result = runner_cli("submit", "job.toml", cwd=tmp_path)
    _assert_clean_exit_2(result, "data: MNIST not found under nowhere/MNIST/raw", tmp_path)
    assert "set data.download = true" in result.stderr


# Every download refused at once, as on a machine without network: urllib sends each request
# to this proxy, where nothing listens.
OFFLINE = {var: "http://127.0.0.1:9" for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}


@pytest.mark.parametrize(
    ("dataset", "cls", "where"),
    [
        ("mnist", "MNIST", "MNIST/raw"),
        ("fashion-mnist", "FashionMNIST", "FashionMNIST/raw"),
        ("cifar10", "CIFAR10", "cifar-10-batches-py"),
    ],
)
def test_a_download_without_network_fails_in_one_line(dataset: str, cls: str, where: str, tmp_path: Path) -> None:
    """Mutation: without flattening torchvision's error (runner/data/datasets.py), MNIST's and
    FashionMNIST's lines run to six."""
    (tmp_path / "job.toml").write_text(GOOD.replace('"digits"', f'"{dataset}"') + 'root = "empty"\ndownload = true\n')
    result = runner_cli("run", "job.toml", cwd=tmp_path, env={**OFFLINE, "no_proxy": "", "NO_PROXY": ""})
    _assert_clean_exit_2(result, f"data: {cls} not found under empty/{where} (", tmp_path)
    assert "Connection refused" in result.stderr and "check your network" in result.stderr
    assert "Downloading" not in result.stdout + result.stderr and result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.toml"]  # no empty data folders left behind


def test_torchvision_model_that_cannot_take_the_input(tmp_path: Path) -> None:
    (tmp_path / "job.toml").write_text(GOOD.replace('"mlp"', '"alexnet"'))
    result = runner_cli("submit", "job.toml", cwd=tmp_path)
    _assert_clean_exit_2(result, "model: alexnet cannot take inputs of shape (1, 28, 28)", tmp_path)


def test_torchvision_model_option_it_does_not_know(tmp_path: Path) -> None:
    (tmp_path / "job.toml").write_text(GOOD.replace('"mlp"', '"resnet18"') + "[model_options]\nwidth = 3\n")
    result = runner_cli("submit", "job.toml", cwd=tmp_path)
    _assert_clean_exit_2(result, "model_options: torchvision's resnet18 rejects them", tmp_path)


def test_a_checkpoint_dir_that_cannot_be_written(tmp_path: Path) -> None:
    (tmp_path / "blocked").write_text("a file where the run directory's parent should be")
    (tmp_path / "job.toml").write_text(GOOD.replace("epochs = 1", "epochs = 1\nthreads = 1"))
    result = runner_cli("submit", "job.toml", "--set", "checkpoint.dir=blocked/run", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: checkpoint.dir: cannot write to blocked/run: ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_store_error_outside_checkpointing_is_one_line_too(tmp_path: Path) -> None:
    # status.json is read and written by the heartbeat, not by the checkpoint code: a store
    # error there (here a directory in its place) must not escape as a traceback either.
    (tmp_path / "run" / "status.json").mkdir(parents=True)
    (tmp_path / "job.toml").write_text(GOOD.replace("epochs = 1", "epochs = 1\nthreads = 1"))
    result = runner_cli("run", "job.toml", "--set", "checkpoint.dir=run", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: checkpoint.dir: cannot write to run: "), lines
    assert "Is a directory" in lines[0]


def test_fresh_is_for_local_runs_only(tmp_path: Path) -> None:
    result = runner_cli("submit", str(JOBS / "cnn.toml"), "--backend", "k8s", "--fresh", cwd=tmp_path)
    assert result.returncode == 2 and "--fresh/--overwrite act on local run directories" in result.stderr
