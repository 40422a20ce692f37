"""Scheduled retraining's promotion gate, end to end on the GCS emulator: real `runner run`
processes train into one job prefix and gate themselves; consumers take PREFIX/promoted;
two gates racing for one record leave one winner."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from runner.cli.main import app
from runner.rundir.layout import RunDir
from runner.rundir.promotions import Promotions
from runner.use.gate import Decision, gate
from tests.helpers import JOBS, runner_cli
from tests.unit.test_promote import finished_run, scores

# A small MLP on digits, gated with a margin of 5 points.
SMALL = ["device=cpu", "threads=1", "model=mlp", "model_options={hidden=[16]}", "promote.enabled=true",
         "promote.min_improvement=0.05"]  # fmt: skip


def train(run_dir: str, *overrides: str, cwd: Path):  # noqa: ANN201 - a CompletedProcess
    sets = [f"--set={o}" for o in (*SMALL, *overrides, f"checkpoint.dir={run_dir}")]
    result = runner_cli("run", str(JOBS / "digits.toml"), "--quiet", *sets, cwd=cwd)
    assert result.returncode == 0, result.stderr + result.stdout
    return result


def final_record(run_dir: str) -> dict:
    return RunDir(run_dir).read_metrics()[-1]


def test_the_retraining_loop_gates_each_run_and_consumers_follow_the_promoted_one(bucket: str, tmp_path: Path) -> None:
    job = f"{bucket}/jobs/digits"
    first = train(f"{job}/run-1", "epochs=1", cwd=tmp_path)
    assert f"promoted: the first promotion under {job}" in first.stdout
    # Worse: one epoch at a tiny rate. Training succeeded (exit 0); the gate says no, and why.
    worse = train(f"{job}/run-2", "epochs=1", "lr=1e-5", cwd=tmp_path)
    gated = final_record(f"{job}/run-2")["promotion"]
    assert not gated["promoted"] and gated["previous"] == f"{job}/run-1"
    line = f"not promoted: test_acc {gated['value']:.4f} vs {gated['previous_value']:.4f} of the promoted {job}/run-1"
    assert line in worse.stdout and "not above the margin 0.0500" in worse.stdout
    assert gated["value"] + 0.3 < gated["previous_value"]
    assert RunDir(f"{job}/run-2").read_status()["message"].startswith("not promoted: test_acc")
    # Better: warm-started from the promoted model, two more epochs.
    better = train(f"{job}/run-3", "epochs=2", "init_from=promoted", cwd=tmp_path)
    assert f"initialised from {job}/run-1/final/model.safetensors" in better.stdout
    gated = final_record(f"{job}/run-3")["promotion"]
    assert gated["promoted"] and gated["value"] > gated["previous_value"] + 0.05
    assert f"promoted: test_acc {gated['value']:.4f} vs {gated['previous_value']:.4f}" in better.stdout
    # The gate measured both on the same samples the run reported: its own test_acc (fp32, CPU).
    assert gated["value"] == final_record(f"{job}/run-3")["test_acc"]

    assert _names(f"{job}/promoted") == ["0000000001.json", "0000000002.json"]
    # The consumers, in this process (torch is loaded already): ls marks the promoted run, and
    # eval (like predict and export: use.source) takes the promoted/ folder for it, saying which.
    listed = CliRunner().invoke(app, ["ls", job, "--json"])
    assert listed.exit_code == 0, listed.output
    assert {r["run"]: r["promoted"] for r in json.loads(listed.stdout)} == {
        f"{job}/run-1": False, f"{job}/run-2": False, f"{job}/run-3": True
    }  # fmt: skip
    used = CliRunner().invoke(app, ["eval", f"{job}/promoted", "--json"])
    assert used.exit_code == 0, used.output
    assert json.loads(used.stdout)["accuracy"] == gated["value"]
    assert json.loads(used.stdout)["weights"] == f"final weights ({job}/run-3/final/model.safetensors)"
    assert used.stderr.startswith(f"{job}/promoted: the promoted model is {job}/run-3 (promoted ")


def _names(url: str) -> list[str]:
    from runner import storage

    return storage.list_names(url)


@pytest.mark.parametrize("values", [(0.9, 0.9), (0.9, 0.95)], ids=["equal", "one-better"])
def test_two_gates_racing_for_one_record_leave_one_winner(bucket: str, values: tuple[float, float]) -> None:
    """Both gates read record 1 (the barrier makes sure) and both try to write record 2: the
    store lets one. The other reads the winner and compares again: equal, it stays out; better,
    it takes record 3. Never a worse model over a better one."""
    job = f"{bucket}/jobs/race"
    gate(finished_run(f"{job}/r1", 0), "test_acc", 0.0, scores({"r1": 0.5}), print)
    a, b = finished_run(f"{job}/a", 1), finished_run(f"{job}/b", 2)
    both_read = threading.Barrier(2, timeout=60)

    def score(trained) -> float:  # noqa: ANN001
        if "/r1/" in trained.source:
            both_read.wait()  # each gate has read record 1 and scored r1: now both commit
        return scores({"r1": 0.5, "a": values[0], "b": values[1]})(trained)

    decisions: dict[str, Decision] = {}
    said: dict[str, list[str]] = {"a": [], "b": []}

    def run(name: str, run_dir: RunDir) -> None:
        decisions[name] = gate(run_dir, "test_acc", 0.0, score, said[name].append)

    threads = [threading.Thread(target=run, args=(n, r)) for n, r in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert set(decisions) == {"a", "b"}
    lost = [n for n in said if said[n]]  # the one that met the winner's record
    assert len(lost) == 1 and said[lost[0]] == [
        "another run was promoted while this gate compared (record 2); comparing with it"
    ]
    winner = "a" if lost == ["b"] else "b"
    assert decisions[winner].promoted
    records = _names(f"{job}/promoted")
    best = "b" if values[1] > values[0] else None
    if best is None or best == winner:  # exactly one winner of record 2, and no record 3
        assert not decisions[lost[0]].promoted and records == ["0000000001.json", "0000000002.json"]
        winning = values[0] if winner == "a" else values[1]
        assert f"vs {winning:.4f} of the promoted {job}/{winner}" in decisions[lost[0]].reason
        assert Promotions(job).newest()[1].run == winner
    else:  # the better one lost the race: it promotes itself over the winner, as record 3
        assert decisions[lost[0]].promoted and decisions[lost[0]].previous == f"{job}/{winner}"
        assert records == ["0000000001.json", "0000000002.json", "0000000003.json"]
        assert Promotions(job).newest()[1].run == best
