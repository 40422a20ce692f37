"""The Colab notebook (notebooks/colab.ipynb), executed on a real local Jupyter kernel with
nbclient against the GCS emulator: a disconnect (the kernel's whole process tree SIGKILLed
mid-training, no warning, as when Colab takes the runtime away) and a second execution of
the whole notebook, which resumes and ends bitwise equal to a run never interrupted.

Outside Colab the notebook's sign-in, Drive and upload cells skip themselves, saying so.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from runner.rundir.layout import RunDir
from tests.helpers import JOBS, REPO, kill_tree, read_weights, runner_cli, same_tensors

NOTEBOOK = REPO / "notebooks" / "colab.ipynb"
# The digits CNN, small batches: 41 steps an epoch, a checkpoint every 3 (as tests/e2e/test_resume.py).
SETS = ["device=cpu", "threads=1", "epochs=2", "batch_size=32", "checkpoint.every_steps=3"]
# Executes a notebook file in place on a local kernel (a child process of this script).
EXECUTE = """
import sys, nbformat, nbclient
nb = nbformat.read(sys.argv[1], as_version=4)
try:
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": sys.argv[2]}}).execute()
finally:
    nbformat.write(nb, sys.argv[1])
"""


def with_parameters(path: Path, checkpoints: str, source: Path = NOTEBOOK, sets: list[str] = SETS) -> None:
    """The notebook `source` (the committed one), with values injected after its parameters
    cell (as papermill does), written to `path`."""
    nb = nbformat.read(source, as_version=4)
    at = next(i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", []))
    injected = f"CHECKPOINTS = {checkpoints!r}\nSETS = {sets!r}\n"
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(injected, metadata={"tags": ["injected-parameters"]}))
    nbformat.write(nb, path)


def execute(path: Path, cwd: Path) -> subprocess.Popen:
    # FORCE_COLOR, CLICOLOR_FORCE: as Colab's kernels have them. A cell's output is not a terminal.
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "FORCE_COLOR": "1", "CLICOLOR_FORCE": "1"}
    command = [sys.executable, "-c", EXECUTE, str(path), str(cwd)]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def outputs(path: Path) -> dict[str, str]:
    """Each code cell's printed text, by cell id."""
    nb = nbformat.read(path, as_version=4)
    return {
        cell.id: "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream")
        for cell in nb.cells
        if cell.cell_type == "code"
    }


def test_the_committed_notebook_is_what_runner_notebook_writes(tmp_path: Path) -> None:
    """notebooks/colab.ipynb is `runner notebook jobs/digits.toml` (never edited by hand), a valid notebook."""
    written = tmp_path / "colab.ipynb"
    result = runner_cli("notebook", str(JOBS / "digits.toml"), "-o", str(written), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert written.read_text() == NOTEBOOK.read_text(), (
        "regenerate: runner notebook jobs/digits.toml -o notebooks/colab.ipynb"
    )
    nbformat.validate(nbformat.read(written, as_version=4))


def test_a_disconnect_mid_training_then_running_the_notebook_again_resumes_bitwise(bucket: str, tmp_path: Path) -> None:
    reference = runner_cli(
        "run", str(JOBS / "digits.toml"), *[f"--set={s}" for s in SETS], "--set=checkpoint.dir=ref", "--quiet",
        cwd=tmp_path,
    )  # fmt: skip
    assert reference.returncode == 0, reference.stdout + reference.stderr
    notebook, run_dir = tmp_path / "colab.ipynb", f"{bucket}/colab/digits"
    with_parameters(notebook, f"{bucket}/colab")

    first = execute(notebook, tmp_path)
    deadline = time.monotonic() + 180
    while not (entries := RunDir(run_dir).checkpoint_index().refresh()) or entries[0].step < 10:
        assert first.poll() is None, f"the notebook ended before a checkpoint:\n{first.stdout.read()}"
        assert time.monotonic() < deadline, "no checkpoint past step 10 in 180 s"
        time.sleep(0.05)
    kill_tree(first.pid)  # the runtime is gone: kernel, runner, everything, without a signal to save
    first.wait(30)
    assert entries[0].step < 82, "training had finished before the disconnect"

    second = execute(notebook, tmp_path)
    assert second.wait(300) == 0, second.stdout.read()
    printed = outputs(notebook)
    assert "resumed from step" in printed["train"], printed["train"]
    assert "not on Colab: no sign-in here" in printed["where"], printed["where"]
    assert "done: test_acc" in printed["train"] and "accuracy" in printed["eval"], printed
    assert "sample.png" in printed["predict"], printed["predict"]
    assert not any("\x1b[" in text for text in printed.values()), printed  # no escape codes as text
    import fsspec
    from safetensors.torch import load

    with fsspec.open(f"{run_dir}/final/model.safetensors", "rb") as f:
        weights = load(f.read())
    assert same_tensors(weights, read_weights(tmp_path / "ref" / "final" / "model.safetensors"))


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["-o", "out.txt"], "ending in .ipynb"),
        ([], "-o (missing)"),
        (["-o", "nb.ipynb", "--set", "epochs=many"], "epochs"),
    ],
)
def test_runner_notebook_refuses_bad_input_in_one_line_and_writes_nothing(
    tmp_path: Path, args: list[str], says: str
) -> None:
    result = runner_cli("notebook", str(JOBS / "digits.toml"), *args, cwd=tmp_path)
    assert result.returncode == 2 and says in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir()), result.stderr


def test_a_user_model_travels_in_the_notebook_and_trains_where_its_files_are_not(tmp_path: Path) -> None:
    """Colab has only what the notebook holds: `runner notebook` embeds the spec's code, and the
    notebook trains and predicts with it in a folder that never had the files."""
    project, colab = tmp_path / "project", tmp_path / "colab"
    (project / "pkg").mkdir(parents=True)
    colab.mkdir()
    (project / "pkg" / "__init__.py").write_text("WIDTH = 16\n")
    (project / "mynets.py").write_text(
        "from torch import nn\nfrom pkg import WIDTH\n\n\ndef small(input_shape, num_classes):\n"
        "    c, h, w = input_shape\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, WIDTH), nn.ReLU(), nn.Linear(WIDTH, num_classes))\n"
    )
    spec = (
        (JOBS / "digits.toml")
        .read_text()
        .replace('model = "cnn"', 'model = "mynets:small"\ncode = ["mynets.py", "pkg"]')
    )
    (project / "job.toml").write_text(spec)
    written = runner_cli("notebook", "job.toml", "-o", str(tmp_path / "own.ipynb"), cwd=project)
    assert written.returncode == 0, written.stderr
    notebook = colab / "own.ipynb"
    with_parameters(notebook, str(colab / "runs"), tmp_path / "own.ipynb", ["device=cpu", "threads=1", "epochs=1"])
    ran = execute(notebook, colab)
    assert ran.wait(300) == 0, ran.stdout.read()
    printed = outputs(notebook)
    assert "your code: mynets.py, pkg/__init__.py" in printed["code"], printed["code"]
    assert "nets:small on digits" in printed["train"] and "done: test_acc" in printed["train"], printed["train"]
    assert "sample.png" in printed["predict"], printed["predict"]
    assert (colab / "mynets.py").exists() and not (colab / "runs" / "digits" / "code").exists()
