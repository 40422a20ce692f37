"""ls, status, logs and cancel on real runs: finished, running then cancelled and resumed,
SIGKILLed (stale), and in the GCS emulator's bucket — all through the real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.cli.views import age
from runner.rundir import heartbeat
from tests.helpers import JOBS, REPO, commit_records, runner_cli

FAST = ["--set=threads=1", "--set=device=cpu", "--quiet"]


def run_to_end(run_dir: str, cwd: Path, epochs: int = 1) -> None:
    result = runner_cli("run", str(JOBS / "digits.toml"), f"--set=epochs={epochs}", f"--set=checkpoint.dir={run_dir}",
                        *FAST, cwd=cwd)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def start(run_dir: str, cwd: Path, epochs: int = 50) -> subprocess.Popen:
    """`runner submit` in the background: its child trains, as a user's would."""
    return subprocess.Popen(
        [sys.executable, "-m", "runner", "submit", str(JOBS / "digits.toml"), f"--set=epochs={epochs}",
         f"--set=checkpoint.dir={run_dir}", "--set=checkpoint.every_steps=5", *FAST],
        cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def wait_for(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def status_json(run: str, cwd: Path) -> dict:
    result = runner_cli("status", run, "--json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def has_checkpoint(run_dir: Path) -> bool:
    """A checkpoint is committed: the newest commit record lists one. (A payload file alone is
    not enough: it is uploaded before its record, and a kill between the two leaves none.)"""
    records = commit_records(run_dir)
    return bool(records) and bool(json.loads(records[-1].read_text())["checkpoints"])


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("finished")
    run_to_end("runs/done", cwd)
    return cwd


def test_a_finished_run_in_ls_status_and_logs(finished: Path) -> None:
    listed = runner_cli("ls", "--json", cwd=finished)  # PREFIX defaults to runs
    assert listed.returncode == 0, listed.stderr
    (run,) = json.loads(listed.stdout)
    assert run["run"] == "runs/done" and run["state"] == "done" and run["backend"] == "local"
    assert run["epoch"] == run["epochs"] == 1 and run["step"] == run["steps_total"] == 21
    assert 0.5 < run["test_acc"] <= 1 and run["best_val_acc"] > 0.5 and run["resumes"] == 0
    assert run["checkpoints"][0]["step"] == 21 and run["checkpoints"][0]["size"] > 1_000_000

    table = runner_cli("ls", cwd=finished).stdout
    assert "runs/done" in table and "done" in table and "21/21" in table

    detail = runner_cli("status", "runs/done", cwd=finished)
    assert detail.returncode == 0 and "digits: cnn on digits" in detail.stdout and "checkpoints" in detail.stdout

    log = runner_cli("logs", "runs/done", cwd=finished).stdout.splitlines()
    assert "epoch 1/1  step 21" in log[1] and log[-1].split(" ", 1)[1].startswith("done: test_acc")
    assert time.strptime(log[0].split(" ", 1)[0], "%Y-%m-%dT%H:%M:%SZ")  # every line timestamped

    cancelled = runner_cli("cancel", "runs/done", cwd=finished)
    assert (
        cancelled.returncode == 2
        and cancelled.stderr == "error: runs/done: not running (state: done); nothing to cancel\n"
    )


def test_follow_cancel_and_resume_a_running_run(tmp_path: Path) -> None:
    submitted = start("runs/long", tmp_path)
    run_dir = tmp_path / "runs" / "long"
    wait_for(lambda: has_checkpoint(run_dir), "the first checkpoint")
    assert status_json("runs/long", tmp_path)["state"] == "running"
    follower = subprocess.Popen([sys.executable, "-m", "runner", "logs", "runs/long", "-f"], cwd=tmp_path,
                                env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)  # fmt: skip

    cancelled = runner_cli("cancel", "runs/long", cwd=tmp_path)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.startswith("runs/long: preempted (stopped by SIGTERM at step ")
    assert submitted.wait(timeout=60) == 143  # the child saved a checkpoint, and submit passed its code on
    followed = follower.communicate(timeout=30)[0]  # -f ends by itself once the run has
    assert follower.returncode == 0 and "stopped by SIGTERM at step" in followed.splitlines()[-1]
    stopped = status_json("runs/long", tmp_path)
    assert stopped["state"] == "preempted" and stopped["message"].startswith("stopped by SIGTERM")

    # Resume it, and finish it sooner: at the end of the epoch it was stopped in (the stop can
    # land in any epoch on a busy machine; one finished already would only be evaluated again).
    run_to_end("runs/long", tmp_path, epochs=stopped["epoch"] + 1)
    resumed = status_json("runs/long", tmp_path)
    assert resumed["state"] == "done" and resumed["resumes"] == 1
    log = runner_cli("logs", "runs/long", cwd=tmp_path).stdout
    assert (
        "stopped by SIGTERM" in log and "resumed from step" in log and "done: test_acc" in log
    )  # one log, both attempts


def test_a_sigkilled_run_shows_as_stale(tmp_path: Path) -> None:
    submitted = start("runs/killed", tmp_path)
    run_dir = tmp_path / "runs" / "killed"
    # SIGKILL loses what was not flushed yet (up to heartbeat.FLUSH_S of log): wait for a line.
    log = run_dir / "log.txt"
    wait_for(lambda: has_checkpoint(run_dir) and log.exists() and log.read_text(), "a checkpoint and a log line")
    status = json.loads((run_dir / "status.json").read_text())
    os.kill(status["pid"], signal.SIGKILL)  # the trainer itself: no handler, no last words
    assert submitted.wait(timeout=30) == 128 + signal.SIGKILL
    assert status_json("runs/killed", tmp_path)["state"] == "running"  # it cannot know yet
    # Let time pass: its last heartbeat, as it would be a couple of minutes later.
    status = json.loads((run_dir / "status.json").read_text())
    status["updated"] -= heartbeat.STALE_AFTER_S + 60
    (run_dir / "status.json").write_text(json.dumps(status))

    info = status_json("runs/killed", tmp_path)
    assert info["state"] == "stale" and info["checkpoints"] and info["test_acc"] is None
    assert "stale" in runner_cli("ls", "runs", cwd=tmp_path).stdout
    follow = runner_cli("logs", "runs/killed", "-f", cwd=tmp_path, timeout=30)  # returns: nothing more will come
    assert follow.returncode == 0 and "digits: cnn on digits" in follow.stdout
    cancelled = runner_cli("cancel", "runs/killed", cwd=tmp_path)
    assert cancelled.returncode == 2 and "not running (state: stale)" in cancelled.stderr


def test_a_run_in_a_bucket(bucket: str, tmp_path: Path) -> None:
    run_to_end(f"{bucket}/runs/cnn", tmp_path)
    (run,) = json.loads(runner_cli("ls", f"{bucket}/runs", "--json", cwd=tmp_path).stdout)
    assert run["run"] == f"{bucket}/runs/cnn" and run["state"] == "done" and run["checkpoints"]
    assert status_json(f"{bucket}/runs/cnn", tmp_path)["test_acc"] == run["test_acc"]
    assert "done: test_acc" in runner_cli("logs", f"{bucket}/runs/cnn", cwd=tmp_path).stdout


RUN_COMMANDS = {  # every command that takes a run directory, with the rest of its arguments
    "status": [],
    "logs": [],
    "cancel": [],
    "eval": [],
    "predict": ["digit.png"],
    "export": ["--format", "onnx", "-o", "model.onnx"],
    "plot": ["-o", "curves.png"],
}


@pytest.mark.parametrize("command", [*RUN_COMMANDS, "ls"])
def test_bad_run_arguments_exit_2_with_one_line(command: str, tmp_path: Path, bucket: str) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("not a run")
    for run, reason in [
        ("missing", "nothing there" if command == "ls" else "no run there"),
        (bucket, "nothing there" if command == "ls" else "no run there"),
        ("notes", None if command == "ls" else "not a run directory"),
    ]:
        result = runner_cli(command, run, *RUN_COMMANDS.get(command, []), cwd=tmp_path)
        if reason is None:  # a directory without runs is a fine PREFIX: an empty listing
            assert result.returncode == 0 and result.stdout == "no runs under notes\n"
            continue
        assert result.returncode == 2, (run, result.stdout, result.stderr)
        assert result.stderr.startswith(f"error: {run}: {reason}")
        assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == [tmp_path / "notes"]  # nothing written: no image, no model file


@pytest.mark.parametrize(
    ("status", "finished", "expected"),
    [
        (None, False, "unknown"),  # a run dir from before status.json
        (None, True, "done"),
        ({"state": "running", "updated": 1000.0}, False, "running"),
        ({"state": "running", "updated": 1000.0 - heartbeat.STALE_AFTER_S - 1}, False, "stale"),
        ({"state": "preempted", "updated": 0.0}, False, "preempted"),  # an ended run never goes stale
        ({"state": "failed", "updated": 0.0}, False, "failed"),
    ],
)
def test_state_from_the_heartbeat(status: dict | None, finished: bool, expected: str) -> None:
    assert heartbeat.state(status, finished, now=1000.0) == expected


def test_ages_read_like_a_person_would_say_them() -> None:
    assert [age(s) for s in (None, 4, 90, 7200, 3 * 86400)] == ["-", "4 s ago", "2 min ago", "2 h ago", "3 d ago"]


def test_a_pod_says_which_job_it_belongs_to(monkeypatch: pytest.MonkeyPatch) -> None:
    assert heartbeat.where()["backend"] == "local"
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("RUNNER_RUN_ID", "cnn-nightly-29123")  # the rendered Job sets it from its job-name label
    here = heartbeat.where()
    assert here["backend"] == "k8s" and here["job"] == "cnn-nightly-29123" and here["pod"] == here["host"]
