"""A checkpoint carries its preprocessing, and the use side takes it from there: the
dataset registry is consulted only for checkpoints written before they carried it."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from runner.data.datasets import DATASETS
from runner.rundir.layout import RunDir, open_run
from runner.use.trained import load_trained


@pytest.fixture
def killed_payload(trained_runs: dict[str, Path]) -> dict:
    """The payload of the killed run's checkpoint (a real run's, written by runner run)."""
    index = RunDir(str(trained_runs["killed"])).checkpoint_index()
    return index.load(index.refresh()[0])


def recommit(payload: dict, run: Path) -> RunDir:
    """`payload`, committed as the only checkpoint of a new run directory."""
    run_dir = RunDir(str(run))
    (run / "spec.toml").parent.mkdir(parents=True)
    (run / "spec.toml").write_text(payload["spec"])
    writer = run_dir.checkpoint_writer(keep=1)
    writer.refresh()
    writer.claim(None)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    writer.commit(buffer.getvalue(), {"epoch": 1, "batch": 0, "step": 41})
    return run_dir


def test_a_real_checkpoint_records_its_preprocessing(killed_payload: dict) -> None:
    assert killed_payload["preprocessing"] == DATASETS["digits"].preprocessing.to_dict()


def test_the_use_side_takes_preprocessing_from_the_checkpoint_not_the_registry(
    killed_payload: dict, tmp_path: Path
) -> None:
    letters = [chr(ord("a") + i) for i in range(10)]
    payload = {**killed_payload, "preprocessing": {**killed_payload["preprocessing"], "classes": letters}}
    trained = load_trained(open_run(str(recommit(payload, tmp_path / "run").url)))
    assert (
        trained.classes == tuple(letters)
        and trained.metadata["classes"] == '["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]'
    )


def test_a_checkpoint_from_before_preprocessing_was_recorded_still_loads(killed_payload: dict, tmp_path: Path) -> None:
    legacy = {k: v for k, v in killed_payload.items() if k != "preprocessing"}
    trained = load_trained(open_run(str(recommit(legacy, tmp_path / "run").url)))
    assert trained.preprocessing == DATASETS["digits"].preprocessing
    assert trained.source.startswith("checkpoint at step 41")
