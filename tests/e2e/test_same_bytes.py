"""Two identical runs, the same files: weights and exports that `sha256sum` calls equal, and
manifests that render to the same text, in processes with different hash seeds and folders."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from runner.rundir.layout import FINAL_WEIGHTS, open_run
from runner.use import export as exports
from runner.use.trained import load_trained
from tests.helpers import JOBS, REPO, runner_cli

pytestmark = pytest.mark.slow

K8S = ["--image", "r:1", "--set", "checkpoint.dir=gs://bucket/runs/digits"]
CALLER = """
import sys
from runner.rundir.layout import open_run
from runner.use import export
from runner.use.trained import load_trained

def deeper(n):
    return deeper(n - 1) if n else export.export(load_trained(open_run(sys.argv[1])), "torchscript", sys.argv[2])

deeper(3)
"""
SHORT = ["--set", "model=mlp", "--set", "model_options={}", "--set", "threads=1", "--set", "epochs=1", "--quiet"]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_two_identical_runs_write_the_same_weights_and_exports(tmp_path: Path) -> None:
    runs = {}
    for name, seed in (("a", "1"), ("b", "2")):  # another folder, another hash seed
        (tmp_path / name).mkdir()
        env = {"PYTHONHASHSEED": seed}
        done = runner_cli("submit", str(JOBS / "digits.toml"), *SHORT, cwd=tmp_path / name, env=env)
        assert done.returncode == 0, done.stderr
        runs[name] = tmp_path / name / "runs" / "digits"

    # TorchScript: run a's through the CLI, run b's from a program of its own (the archive's debug
    # tables hold the Python stack it was traced in: who calls must not matter). Each in a fresh
    # process: TorchScript numbers its classes per process, so a second trace in one differs.
    cli = runner_cli("export", "runs/digits", "--format", "torchscript", "-o", "model.pt", cwd=tmp_path / "a")
    assert cli.returncode == 0, cli.stderr
    program = subprocess.run([sys.executable, "-c", CALLER, str(runs["b"]), str(tmp_path / "b" / "model.pt")], cwd=REPO)
    assert program.returncode == 0
    digests: dict[str, dict[str, str]] = {}
    for name, run in runs.items():
        trained = load_trained(open_run(str(run)))
        digests[name] = {
            "final/model.safetensors": _sha256((run / FINAL_WEIGHTS).read_bytes()),
            **{f"export {fmt}": _sha256(exports.WRITERS[fmt](trained)) for fmt in ("safetensors", "onnx")},
        }
        digests[name]["export torchscript"] = _sha256((tmp_path / name / "model.pt").read_bytes())

    differing = [key for key in digests["a"] if digests["a"][key] != digests["b"][key]]
    assert not differing, f"differ between two identical runs: {differing}\n{json.dumps(digests, indent=1)}"
    # The same weights, the same file: exporting the final weights gives final/model.safetensors.
    assert digests["a"]["export safetensors"] == digests["a"]["final/model.safetensors"]


def test_manifests_render_to_the_same_text_whatever_the_hash_seed(tmp_path: Path) -> None:
    texts = set()
    for seed in ("1", "2", "3"):
        for extra in ([], ["--jobset"], ["--serve"], ["--schedule", "0 3 * * *"]):
            rendered = runner_cli(
                "render", str(JOBS / "digits.toml"), *K8S, *extra, cwd=tmp_path, env={"PYTHONHASHSEED": seed}
            )
            assert rendered.returncode == 0, rendered.stderr
            texts.add((tuple(extra), rendered.stdout))
    assert len(texts) == 4
