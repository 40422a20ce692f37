"""A run whose loss diverges (SGD at lr 1e6: NaN from the first epoch) still leaves only
valid JSON behind: metrics.jsonl, status.json and every `--json` output, null for a
number that is not finite. (Python writes bare NaN, which JSON.parse, jq and Go refuse.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import JOBS, runner_cli


def strict(text: str) -> object:
    """Parse as a strict JSON parser does: NaN, Infinity and -Infinity are errors."""

    def refuse(token: str) -> None:
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def diverged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("diverged")
    result = runner_cli(
        "run", str(JOBS / "digits.toml"), "--set", "model=mlp", "--set", "model_options={}", "--set", "epochs=2",
        "--set", "optimizer=sgd", "--set", "lr=1e6", "--set", "threads=1", "--set", "checkpoint.dir=runs/x",
        "--quiet", cwd=cwd,
    )  # fmt: skip
    assert "nan" in result.stdout, result.stdout + result.stderr  # it did diverge
    return cwd


def test_metrics_and_status_are_json_with_null_for_what_is_not_finite(diverged: Path) -> None:
    run = diverged / "runs" / "x"
    records = [strict(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["train_loss"] is None and records[0]["val_loss"] is None
    strict((run / "status.json").read_text())
    for record in sorted((run / "checkpoints" / "commits").glob("*.json")):
        strict(record.read_text())


@pytest.mark.parametrize(
    "command", [["status", "runs/x"], ["ls"], ["eval", "runs/x"], ["eval", "runs/x", "--split", "val"]]
)
def test_every_json_output_parses_strictly(command: list[str], diverged: Path) -> None:
    result = runner_cli(*command, "--json", cwd=diverged)
    assert result.returncode == 0, result.stderr
    strict(result.stdout)
