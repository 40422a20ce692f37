"""Nothing of a run outlives its launcher, however the launcher dies.

`setsid runner submit ... &` and then `kill -9 -- -PGID` is what a terminal closing, `timeout
-s KILL` or a batch scheduler does: the whole process group of the launcher dies at once, and
only it, since runner starts its training child (and torchrun its workers) in sessions of their
own. Those must end too (EgoVerse #682, vllm-omni #2317): a leaked run holds a GPU and races
the resubmitted attempt for the run directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.rundir.layout import RunDir
from tests.helpers import JOBS, REPO, Job, descendants

ENV = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
SPEC = [str(JOBS / "digits.toml"), "--set=device=cpu", "--set=batch_size=32", "--set=checkpoint.every_steps=3"]
GONE_WITHIN_S = 30  # a polite stop of the orphans: an emergency save of a small CNN, then torchrun's own exit


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie has ended; init may be slow to reap it in a container)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def newest_step(run_dir: Path) -> int:
    entries = RunDir(str(run_dir)).checkpoint_index().refresh()
    return entries[0].step if entries else 0


@pytest.mark.parametrize("procs", [1, 2])
def test_killing_the_launchers_process_group_ends_every_process_of_the_run(procs: int, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [*SPEC, f"--set=resources.procs_per_node={procs}", f"--set=checkpoint.dir={run_dir}", "--quiet"]
    launcher = subprocess.Popen(
        [sys.executable, "-m", "runner", "submit", *args, "--set=epochs=30"],
        cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    run: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while newest_step(run_dir) < 3:  # training, a checkpoint committed
            assert launcher.poll() is None and time.monotonic() < deadline, "no checkpoint in 120 s"
            time.sleep(0.05)
        run = descendants(launcher.pid)
        # The child (`runner run`), or torchrun and its workers, in sessions of their own.
        assert len(run) >= procs + (procs > 1) and all(os.getsid(p) != launcher.pid for p in run), run
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()
        killed = time.monotonic()
        while (left := [p for p in run if alive(p)]) and time.monotonic() < killed + GONE_WITHIN_S:
            time.sleep(0.05)
        assert not left, f"still running {time.monotonic() - killed:.0f} s after the launcher was killed: {left}"
    finally:
        for pid in run:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    # What they left is a resumable run: resubmitted, it goes on from a checkpoint.
    again = subprocess.run(
        [sys.executable, "-m", "runner", "submit", *args, "--set=epochs=1"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert "resumed from step" in again.stdout + again.stderr, again.stdout + again.stderr


def test_sigkill_of_torchrun_ends_its_workers(tmp_path: Path) -> None:
    """torchrun's elastic agent starts each worker in a session of its own: they bind to it."""
    run_dir = tmp_path / "run"
    args = [*SPEC, "--set=resources.procs_per_node=2", f"--set=checkpoint.dir={run_dir}", "--quiet", "--set=epochs=30"]
    launcher = subprocess.Popen(
        [sys.executable, "-m", "runner", "submit", *args],
        cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while newest_step(run_dir) < 3:
            assert launcher.poll() is None and time.monotonic() < deadline, "no checkpoint in 120 s"
            time.sleep(0.05)
        (agent,) = [p for p in descendants(launcher.pid) if b"runner.backends.agent" in Path(f"/proc/{p}/cmdline").read_bytes()]
        workers = descendants(agent)
        assert len(workers) == 2, workers
        os.kill(agent, signal.SIGKILL)
        killed = time.monotonic()
        while (left := [p for p in workers if alive(p)]) and time.monotonic() < killed + GONE_WITHIN_S:
            time.sleep(0.05)
        assert not left, f"workers still running {time.monotonic() - killed:.0f} s after torchrun was killed: {left}"
        assert launcher.wait(GONE_WITHIN_S) != 0  # the launch failed: torchrun is gone
    finally:
        for pid in [launcher.pid, *workers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# A polite stop's moments in a run's life, each an event the test waits for: start-up (the
# imports, torchrun's rendezvous), the data loaded (the first line), training (a checkpoint
# committed since this attempt began), the end (the epoch's line: then the test set's
# evaluation and the final save).
MOMENTS = {
    "start-up": lambda job, run_dir, step: time.sleep(0.3),
    "data loaded": lambda job, run_dir, step: job.wait_for(r" train / \d+ val / "),
    "training": lambda job, run_dir, step: wait_until(lambda: newest_step(run_dir) > step, job),
    "the end": lambda job, run_dir, step: job.wait_for(r"^epoch 1/1 "),
}


def wait_until(done, job: Job, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert job.proc.poll() is None and time.monotonic() < deadline, job.out
        time.sleep(0.02)


@pytest.mark.parametrize("procs", [1, 2])
def test_a_stop_at_any_moment_ends_143_with_runners_line_last_and_resumes(procs: int, tmp_path: Path) -> None:
    """SIGTERM to the launcher (what a pod's PID 1 gets) at each moment, one attempt after
    the other on one run directory: each ends 143 (0 if it had finished), runner's one line the
    last thing printed, no traceback; the next attempt resumes, and the last finishes."""
    run_dir = tmp_path / "run"
    args = [*SPEC, f"--set=resources.procs_per_node={procs}", f"--set=checkpoint.dir={run_dir}", "--quiet"]
    for moment, reached in [*MOMENTS.items(), ("never", None)]:
        job = Job("submit", *args, "--set=epochs=1", cwd=tmp_path, env=ENV)
        if reached is not None:
            reached(job, run_dir, newest_step(run_dir))
            os.kill(job.proc.pid, signal.SIGTERM)
        code = job.finish()
        last = job.out.strip().splitlines()[-1] if job.out.strip() else ""
        assert "Traceback" not in job.out and "SignalException" not in job.out, (moment, job.out)
        if code == 0:
            assert last.startswith("done: test_acc"), (moment, job.out)
            break
        assert code == 143, (moment, code, job.out)
        assert re.match(r"stopped by SIGTERM (at step \d+|while starting).*; resubmit to", last), (moment, job.out)
    assert code == 0 and (run_dir / "final" / "model.safetensors").exists(), job.out
