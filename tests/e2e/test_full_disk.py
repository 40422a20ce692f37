"""A full disk, for real: a run directory on a tmpfs with room for two checkpoints and the
final weights, not three checkpoints (h2o-llmstudio #214: a full disk at the final save
lost the run's result). Retention frees what it may, never the newest checkpoint, and
the final weights are written whatever happens to the final checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.rundir.layout import RunDir
from tests.helpers import JOBS, commit_records, runner_cli

# The small CNN's checkpoint is 1.81 MB, its final weights 0.6 MB: 2 x 1.81 + 0.6 + small files fit, 3 x 1.81 do not.
DISK = "4600k"
SPEC = ["--set=threads=1", "--set=batch_size=32", "--set=model_options={channels=[8,16],hidden=64}",
        "--set=checkpoint.every_seconds=0", "--set=checkpoint.keep=3", "--quiet"]  # fmt: skip


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI and the developer machines run as root)")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_disk_that_fills_up_frees_old_checkpoints_and_still_gets_the_final_weights(small_disk: Path) -> None:
    run = small_disk / "run"
    result = runner_cli("run", str(JOBS / "digits.toml"), *SPEC, "--set=epochs=3", f"--set=checkpoint.dir={run}",
                        cwd=small_disk.parent)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert (run / "final" / "model.safetensors").exists()
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    # The third checkpoint needed the first's space: the newest two are kept, the newest is the end.
    steps = [e.step for e in RunDir(str(run)).checkpoint_index().refresh()]
    assert steps == [123, 82], steps
    records = [json.loads(p.read_text()) for p in commit_records(run)]
    assert "free space" in [r["kind"] for r in records]


def test_when_even_that_is_not_enough_the_weights_are_still_written_and_the_reason_named(small_disk: Path) -> None:
    run = small_disk / "run"
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * 1_400_000)  # someone else's file: the disk holds one checkpoint and the weights
    result = runner_cli("run", str(JOBS / "digits.toml"), *SPEC, "--set=epochs=2", f"--set=checkpoint.dir={run}",
                        cwd=small_disk.parent)  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert (run / "final" / "model.safetensors").exists(), out
    assert "No space left on device" in out and "warning: the final checkpoint was not saved" in out, out
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "done" and "a larger epochs would resume from step 41" in status["message"], status
    assert filler.exists()  # runner frees only what is its own
