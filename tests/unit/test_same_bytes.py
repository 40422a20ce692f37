"""The same content, the same bytes: what runner writes depends on what it holds alone,
not on a hash seed, a key order, the clock or the umask (issue 23, item 9)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from runner import safetensors_file
from runner.backends.image import stage
from runner.rundir.layout import FINAL_WEIGHTS, RunDir
from tests.helpers import REPO

WEIGHTS = {
    "b.bias": torch.arange(3, dtype=torch.float32),
    "a.weight": torch.ones(2, 3, dtype=torch.float64),
    "c.steps": torch.tensor(7, dtype=torch.int64),
    "d.mask": torch.tensor([True, False]),
}
METADATA = {"model": "mlp", "dataset": "digits", "classes": '["0","1"]', "format": "runner/1", "zeta": "é"}


def _final_bytes(run: Path, weights: dict, metadata: dict) -> bytes:
    RunDir(str(run)).write_final(weights, metadata)
    return (run / FINAL_WEIGHTS).read_bytes()


def test_equal_weights_and_metadata_in_any_key_order_write_equal_bytes(tmp_path: Path) -> None:
    reordered = dict(reversed(list(METADATA.items())))
    written = {
        _final_bytes(tmp_path / f"run{i}", dict(reversed(WEIGHTS.items())) if i % 2 else WEIGHTS, meta)
        for i, meta in enumerate([METADATA, reordered] * 5)
    }
    assert len(written) == 1  # safetensors' own save varies its header's order from call to call
    data = written.pop()
    assert (8 + int.from_bytes(data[:8], "little")) % 8 == 0  # the data starts aligned, as safetensors has it

    # Still a safetensors file to safetensors and to runner's own readers.
    path = tmp_path / "run0" / FINAL_WEIGHTS
    loaded = load_file(str(path))
    assert loaded.keys() == WEIGHTS.keys() and all(torch.equal(loaded[k], WEIGHTS[k]) for k in WEIGHTS)
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == METADATA
    weights, metadata = RunDir(str(tmp_path / "run0")).read_final()
    assert metadata == METADATA and all(torch.equal(weights[k], WEIGHTS[k]) for k in WEIGHTS)


def test_the_same_bytes_in_another_process_with_another_hash_seed(tmp_path: Path) -> None:
    code = (
        "import sys, torch; from runner import safetensors_file as s; "
        "sys.stdout.buffer.write(s.dumps({'w': torch.arange(4.0)}, {str(i): 'v' for i in range(9)}))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1 and safetensors_file.metadata(outputs.pop()) == {str(i): "v" for i in range(9)}


def test_canonical_is_idempotent_and_keeps_the_tensors() -> None:
    data = safetensors_file.dumps(WEIGHTS, METADATA)
    assert safetensors_file.canonical(data) == data
    tensors, metadata = safetensors_file.loads(data)
    assert metadata == METADATA and all(torch.equal(tensors[k], WEIGHTS[k]) for k in WEIGHTS)
    assert safetensors_file.metadata(safetensors_file.dumps(WEIGHTS)) == {}  # no metadata: none written


def _tree(root: Path) -> dict[str, tuple[int, int, str]]:
    return {
        p.relative_to(root).as_posix(): (
            p.stat().st_mtime_ns,
            p.stat().st_mode,
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "",
        )
        for p in sorted(root.rglob("*"))
    }


def test_a_staged_build_context_is_the_same_tree_whenever_and_with_whatever_umask(tmp_path: Path) -> None:
    # docker build tars the context folder with each file's mtime and mode, and COPY keeps both
    # in the layer: a context staged now and one staged later must not differ in either.
    files = {"pyproject.toml": b"[project]\n", "runner/__init__.py": b"", "runner/cli/app.py": b"x = 1\n"}
    old = os.umask(0o077)
    try:
        stage(files, tmp_path / "a")
    finally:
        os.umask(old)
    stage(dict(reversed(files.items())), tmp_path / "b")
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
