"""Exact resume across real processes: SIGKILL at random moments, SIGTERM/SIGINT twice in
one epoch, a store that goes down — each ends with final weights bitwise equal to a run
that was never interrupted. Checkpoints go to the GCS emulator over HTTP."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from runner.rundir.layout import RunDir
from tests.conftest import make_bucket
from tests.helpers import JOBS, REPO, FlakyProxy, commit_records, read_weights, runner_cli, same_tensors

# The CNN with dropout and Adam, small batches: 41 steps an epoch, a checkpoint every 3.
SPEC = [
    "--set=device=cpu",
    "--set=threads=1",
    "--set=epochs=2",
    "--set=batch_size=32",
    "--set=checkpoint.every_steps=3",
]
STEPS_PER_EPOCH = 41
# A stop that lands before any step past the newest checkpoint has nothing to save, and says so.
NOTHING_NEW = r"nothing trained since the checkpoint at step \d+"


def start(
    command: str, run_dir: str, cwd: Path, env: dict[str, str] | None = None, extra: tuple[str, ...] = ()
) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runner",
            command,
            str(JOBS / "digits.toml"),
            *SPEC,
            *extra,
            f"--set=checkpoint.dir={run_dir}",
            "--quiet",
        ],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONFAULTHANDLER": "1", "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_until_training(proc: subprocess.Popen) -> list[str]:
    """Read output up to the header line printed just before the first step."""
    lines = []
    while line := proc.stdout.readline():
        lines.append(line)
        if line.startswith("digits: "):
            return lines
    raise AssertionError(f"exited {proc.wait()} before training:\n{''.join(lines)}")


def finish(proc: subprocess.Popen, lines: list[str], timeout: float = 180) -> tuple[int, str]:
    """Wait for the process to end; its whole output (the reader's buffer included)."""
    rest: list[str] = []
    reader = threading.Thread(target=lambda: rest.append(proc.stdout.read()), daemon=True)
    reader.start()
    reader.join(timeout)
    if reader.is_alive():
        proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
        reader.join(30)
        raise AssertionError(f"hung; its threads:\n{''.join(lines)}{''.join(rest)}")
    return proc.wait(), "".join(lines) + "".join(rest)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The final weights of the same spec, run once without interruption."""
    cwd = tmp_path_factory.mktemp("reference")
    result = runner_cli("run", str(JOBS / "digits.toml"), *SPEC, "--set=checkpoint.dir=ref", "--quiet", cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return read_weights(cwd / "ref" / "final" / "model.safetensors")


def final_weights(run_dir: str) -> dict:
    import fsspec

    with fsspec.open(f"{run_dir}/final/model.safetensors", "rb") as f:
        from safetensors.torch import load

        return load(f.read())


def newest_checkpoint_step(run_dir: str) -> int:
    entries = RunDir(run_dir).checkpoint_index().refresh()
    return entries[0].step if entries else 0


def wait_for_a_checkpoint_after(step: int, run_dir: str, proc: subprocess.Popen, timeout: float = 120) -> int:
    """Until the run commits a checkpoint past `step` (or ends); the newest committed step."""
    deadline = time.monotonic() + timeout
    while True:
        ended = proc.poll() is not None
        if (newest := newest_checkpoint_step(run_dir)) > step or ended:
            return newest
        assert time.monotonic() < deadline, "no new checkpoint"
        time.sleep(0.01)


def killed_at_random_moments(
    run_dir: str, cwd: Path, rng: random.Random, kills_wanted: int, extra: tuple[str, ...] = ()
) -> str:
    """Start the run, SIGKILL it at a random moment after each new commit `kills_wanted`
    times, resubmit until it finishes; assert each attempt resumed further on. The attempts' output."""
    kills, resumed_steps, log = 0, [], []
    for _ in range(kills_wanted + 6):
        proc = start("run", run_dir, cwd, extra=extra)
        lines = wait_until_training(proc)
        if kills < kills_wanted:
            # A random moment (during a step or an upload) once this attempt has committed
            # progress, a few steps in, so that the kills fit in the 82 steps whatever the
            # machine's speed: the delay is a random part of the time this attempt took from
            # its first step to that commit (about 3 steps and an upload), so it scales with
            # the machine; a fixed wall-clock delay let a fast machine finish first.
            started = time.monotonic()
            wait_for_a_checkpoint_after(newest_checkpoint_step(run_dir), run_dir, proc)
            time.sleep(rng.uniform(0.0, 1.0) * (time.monotonic() - started))
            proc.kill()  # a no-op if it has already finished
        code, out = finish(proc, lines)
        log.append(f"--- exit {code}\n{out}")
        # A kill can land after training ended (during exit): the next attempt then finds it done.
        resumed_steps += [
            int(s) for s in re.findall(r"(?:resumed from |already trained to epoch \d+ \()step (\d+)", out)
        ]
        if code == 0:
            break
        assert code == -signal.SIGKILL, "\n".join(log)
        kills += 1  # counted by how it ended, not by whether it was still running before the kill
    assert kills == kills_wanted and code == 0, "\n".join(log)
    # Each attempt after a kill resumed, further on than the one before.
    assert len(resumed_steps) == kills and resumed_steps == sorted(set(resumed_steps)), "\n".join(log)
    return "\n".join(log)


def test_sigkill_at_random_moments_then_resubmit_ends_bitwise_equal(
    reference: dict, bucket: str, tmp_path: Path
) -> None:
    run_dir = f"{bucket}/runs/killed"
    killed_at_random_moments(run_dir, tmp_path, random.Random(20261122), kills_wanted=4)
    assert same_tensors(final_weights(run_dir), reference)


def test_on_a_fuse_mount_without_hard_links_a_killed_run_resumes_bitwise(
    reference: dict, fuse_dir: Path, tmp_path: Path
) -> None:
    """Google Drive in Colab, gcsfuse and rclone mounts have no link(2): runner's create-only
    commit records fall back to an exclusive create there (a real rclone mount, both of its
    cache modes)."""
    run_dir = str(fuse_dir / "runs" / "killed")
    out = killed_at_random_moments(run_dir, tmp_path, random.Random(14), kills_wanted=2)
    assert same_tensors(final_weights(run_dir), reference)
    # What one writer means on a mount, said where it applies (issue 23.3).
    assert out.count(f"note: {run_dir}/checkpoints is on a FUSE mount (fuse.rclone)") == 2, out


def test_with_augmentation_a_killed_run_resumes_bitwise_and_trains_on_other_images(
    reference: dict, tmp_path: Path
) -> None:
    """Random crops and translations drawn from (seed, step): a run killed twice ends with the
    weights of the same augmented run never interrupted; those differ from the plain run's,
    and the model still learns (the figures are printed, for the record)."""
    augmented = ("--set=data.augment=['crop', 'translate']",)
    plain_dir, uninterrupted, run_dir = tmp_path / "plain", tmp_path / "uninterrupted", tmp_path / "killed"
    for where, extra in ((uninterrupted, augmented), (plain_dir, ())):
        result = runner_cli(
            "run", str(JOBS / "digits.toml"), *SPEC, *extra, f"--set=checkpoint.dir={where}", "--quiet", cwd=tmp_path
        )
        assert result.returncode == 0, result.stdout + result.stderr
    killed_at_random_moments(str(run_dir), tmp_path, random.Random(15), kills_wanted=2, extra=augmented)
    weights = final_weights(str(run_dir))
    assert same_tensors(weights, final_weights(str(uninterrupted)))
    assert not same_tensors(weights, reference)
    records = {
        name: [json.loads(line) for line in (where / "metrics.jsonl").read_text().splitlines()]
        for name, where in (("augmented", uninterrupted), ("plain", plain_dir))
    }
    for name, rows in records.items():
        print(name, [(r.get("train_loss"), r.get("val_acc"), r.get("test_acc")) for r in rows])
    assert records["augmented"][0]["train_loss"] != records["plain"][0]["train_loss"]
    assert records["augmented"][-1]["test_acc"] > 0.5, records["augmented"][-1]  # it learns (chance: 0.1)


def test_sigterm_twice_inside_one_epoch_saves_exits_143_and_resumes_exactly(
    reference: dict, bucket: str, tmp_path: Path
) -> None:
    run_dir = f"{bucket}/runs/preempted"
    stopped_at, seen = [], []
    for _ in range(2):
        proc = start("run", run_dir, tmp_path)
        lines = wait_until_training(proc)
        # Once this attempt has committed a checkpoint of its own (every 3 steps): a few steps
        # in, on a machine of any speed, so both stops land inside the 41-step first epoch.
        seen.append(wait_for_a_checkpoint_after(stopped_at[-1] if stopped_at else 0, run_dir, proc))
        proc.send_signal(signal.SIGTERM)  # what the kubelet sends on preemption
        code, out = finish(proc, lines)
        assert code == 143, out
        step = int(
            re.search(
                r"stopped by SIGTERM at step (\d+): (?:checkpoint \([\d.]+ MB\) saved in [\d.]+ s|" + NOTHING_NEW + ")",
                out,
            )[1]
        )
        stopped_at.append(step)
    # Each stop came after that attempt's own commit, and both inside the first epoch.
    assert 3 <= seen[0] <= stopped_at[0] < seen[1] <= stopped_at[1] < STEPS_PER_EPOCH, (seen, stopped_at)
    code, out = finish(proc := start("run", run_dir, tmp_path), [])
    assert code == 0 and f"resumed from step {stopped_at[1]} (epoch 1, batch {stopped_at[1]})" in out, out
    assert same_tensors(final_weights(run_dir), reference)


def test_submit_forwards_sigint_and_the_job_saves_and_exits_143(reference: dict, bucket: str, tmp_path: Path) -> None:
    run_dir = f"{bucket}/runs/interrupted"
    proc = start("submit", run_dir, tmp_path)
    lines = wait_until_training(proc)
    committed = wait_for_a_checkpoint_after(0, run_dir, proc)  # training is under way, whatever the speed
    proc.send_signal(signal.SIGINT)  # Ctrl-C, sent to `runner submit` alone
    code, out = finish(proc, lines)
    assert code == 143 and "stopped by SIGINT" in out, out
    stopped = int(re.search(r"stopped by SIGINT at step (\d+)", out)[1])
    assert 3 <= committed <= stopped < 2 * STEPS_PER_EPOCH, (committed, out)
    code, out = finish(start("submit", run_dir, tmp_path), [])
    assert code == 0 and f"resumed from step {stopped} " in out, out
    assert same_tensors(final_weights(run_dir), reference)


def test_a_store_that_goes_down_for_a_while_is_survived(reference: dict, gcs_emulator: str, tmp_path: Path) -> None:
    proxy = FlakyProxy(urlparse(gcs_emulator).port)
    bucket = make_bucket(gcs_emulator)
    run_dir = f"gs://{bucket}/runs/outage"
    try:
        proc = start("run", run_dir, tmp_path, env={"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{proxy.port}"})
        lines = wait_until_training(proc)
        # Training is under way (a checkpoint committed; read from the emulator, not via the proxy), not over.
        assert 3 <= wait_for_a_checkpoint_after(0, run_dir, proc) < 2 * STEPS_PER_EPOCH and proc.poll() is None
        proxy.down()
        # Down until the run has been turned away several times (its uploads, metrics and
        # heartbeat retrying): an outage it felt, however fast the machine trains.
        deadline = time.monotonic() + 120
        while proxy.refused < 5 and proc.poll() is None:
            assert time.monotonic() < deadline, f"refused {proxy.refused} connections in 120 s"
            time.sleep(0.05)
        proxy.up()
        code, out = finish(proc, lines)
    finally:
        proxy.close()
    assert code == 0, out
    assert proxy.refused >= 5  # the outage was felt
    assert same_tensors(final_weights(run_dir), reference)
    # The storage library's retries and their tracebacks go to log.txt, not to the terminal.
    assert "Traceback" not in out and "gcsfs" not in out, out


# -- retention in a real run, stopped and resumed ------------------------------------------------------

KEEP_ONE = [
    "--set=checkpoint.keep=1",
    "--set=checkpoint.every_steps=3",
    "--set=device=cpu",
    "--set=threads=1",
    "--set=batch_size=32",
    "--set=epochs=2",
    "--quiet",
]


class Run:
    """The real `runner run` in a subprocess; its output collected by a thread as it comes."""

    def __init__(self, run_dir: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runner", "run", str(JOBS / "digits.toml"), *KEEP_ONE,
             f"--set=checkpoint.dir={run_dir}"],
            cwd=run_dir.parent, env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, what: str, until, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            assert self.proc.poll() is None, f"exited {self.proc.returncode} before {what}:\n{self.output}"
            assert time.monotonic() < deadline, f"no {what} in {timeout} s:\n{self.output}"
            time.sleep(0.02)

    def stop(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self.reader.join(10)
        return code


def newest_record(run_dir: Path) -> dict | None:
    records = commit_records(run_dir)
    for path in reversed(records):  # a record pruned meanwhile: the one before is still newer than we need
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            continue
    return None


def test_a_resumed_run_keeps_the_checkpoint_it_resumed_from_while_it_saves_more(tmp_path: Path) -> None:
    """Mutation: checkpoint.retain without `or e.file == pinned`."""
    run_dir = tmp_path / "run"
    first = Run(run_dir)
    first.wait_for("committed checkpoint", lambda: bool((newest_record(run_dir) or {}).get("checkpoints")))
    code = first.stop()
    assert code == 143, first.output
    stopped = int(re.search(r"stopped by SIGTERM at step (\d+): (?:checkpoint|" + NOTHING_NEW + ")", first.output)[1])

    second = Run(run_dir)
    resumed_line = re.compile(r"resumed from step (\d+) \(epoch \d+, batch \d+\) of (\S+\.pt)")
    second.wait_for("resume line", lambda: resumed_line.search(second.output))
    step, resumed_from = resumed_line.search(second.output).groups()
    assert int(step) == stopped, second.output
    claim_seq = newest_record(run_dir)["seq"]  # the claim is written before the line is printed
    second.wait_for("3 more commits", lambda: newest_record(run_dir)["seq"] >= claim_seq + 3)
    assert second.stop() == 143, second.output

    record = newest_record(run_dir)
    assert record["seq"] >= claim_seq + 3
    assert record["pinned"] == resumed_from
    files = [e["file"] for e in record["checkpoints"]]
    assert resumed_from in files, f"the checkpoint resumed from ({resumed_from}) was pruned; kept: {files}"
    store = RunDir(str(run_dir)).checkpoint_index()
    store.refresh()
    pinned = next(e for e in store.entries if e.file == resumed_from)
    assert store.load(pinned)["state"] is not None and pinned.step == stopped


def test_sighup_with_the_terminal_gone_saves_exits_143_and_resumes_exactly(reference: dict, tmp_path: Path) -> None:
    # A closed terminal or a dropped SSH session: SIGHUP, and nobody reading the output any more.
    run_dir = str(tmp_path / "hangup")
    proc = start("submit", run_dir, tmp_path)
    wait_until_training(proc)
    committed = wait_for_a_checkpoint_after(0, run_dir, proc)
    proc.stdout.close()  # the terminal is gone: every later write to it fails (EPIPE)
    proc.send_signal(signal.SIGHUP)  # to `runner submit`, which forwards it
    assert proc.wait(timeout=120) == 143
    status = json.loads((tmp_path / "hangup" / "status.json").read_text())
    assert status["state"] == "preempted" and status["message"].startswith("stopped by SIGHUP at step"), status
    stopped = int(re.search(r"at step (\d+)", status["message"])[1])
    assert 3 <= committed <= stopped < 2 * STEPS_PER_EPOCH and newest_checkpoint_step(run_dir) == stopped
    log = (tmp_path / "hangup" / "log.txt").read_text()
    assert re.search(rf"stopped by SIGHUP at step {stopped}: (?:checkpoint|{NOTHING_NEW})", log), log
    code, out = finish(start("submit", run_dir, tmp_path), [])
    assert code == 0 and f"resumed from step {stopped} " in out, out
    assert same_tensors(final_weights(run_dir), reference)


def test_a_second_ctrl_c_aborts_and_says_so(tmp_path: Path) -> None:
    run_dir = str(tmp_path / "aborted")
    proc = start("run", run_dir, tmp_path)
    lines = wait_until_training(proc)
    committed = wait_for_a_checkpoint_after(0, run_dir, proc)
    # Impatient: Ctrl-C again and again. Signals sent back to back arrive as one, so repeat
    # until it ends: one of the later ones lands while the first one's checkpoint is saved.
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        proc.send_signal(signal.SIGINT)
        time.sleep(0.02)
    code, out = finish(proc, lines)
    status = json.loads((tmp_path / "aborted" / "status.json").read_text())
    assert "Traceback" not in out, out
    if re.search(NOTHING_NEW, out):  # the first Ctrl-C came before a step past that commit: nothing to save
        assert code == 143 and status["state"] == "preempted", (code, status, out)
    else:  # the usual case: a later Ctrl-C cut the emergency save short
        assert code == 130 and "aborted" in out, out
        assert status["state"] == "aborted" and "second SIGINT" in status["message"], status
    code, out = finish(start("run", run_dir, tmp_path), [])  # the last committed checkpoint still resumes
    assert code == 0 and re.search(r"resumed from step (\d+) ", out) and committed <= newest_checkpoint_step(run_dir)


def test_an_emergency_save_the_store_does_not_take_ends_within_the_grace_period(
    gcs_emulator: str, tmp_path: Path
) -> None:
    # The store goes down, then the kubelet sends SIGTERM: the save cannot succeed, and
    # Kubernetes SIGKILLs at grace_seconds. runner must say so and exit before that.
    grace = 8
    proxy = FlakyProxy(urlparse(gcs_emulator).port)
    run_dir = f"gs://{make_bucket(gcs_emulator)}/runs/grace"
    env = {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{proxy.port}"}
    try:
        proc = start("run", run_dir, tmp_path, env=env, extra=(f"--set=resources.grace_seconds={grace}",))
        lines = wait_until_training(proc)
        committed = wait_for_a_checkpoint_after(0, run_dir, proc)
        proxy.down()
        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code, out = finish(proc, lines)
        took = time.monotonic() - stopped_at
    finally:
        proxy.close()
    assert code == 1, out
    # Bounded by the grace period (plus the interpreter's exit), not by the store's retries.
    assert took < grace + 1.5, (took, out)
    failed = [line for line in out.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 1 and "Traceback" not in out, out
    assert f"(resources.grace_seconds = {grace})" in failed[0] and "resubmitting resumes from there" in failed[0]
    kept = int(re.search(r"the newest checkpoint is step (\d+)", failed[0])[1])
    assert kept >= committed and newest_checkpoint_step(run_dir) == kept  # nothing claimed that is not there
