"""The local backend: `runner run` in a child process on this machine.

The child is what a container would run, so a job behaves the same here and on a
cluster. It gets its own session, so a Ctrl-C reaches it exactly once: through
this process, which forwards SIGINT, SIGTERM and SIGHUP.

status, logs and cancel read the run directory (status.json, log.txt) rather than
this process, so they work from another terminal, and for a run in a bucket.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from runner.backends.api import Submission
from runner.errors import RunFailed, UserError
from runner.rundir import heartbeat, summary
from runner.rundir.layout import open_run
from runner.training.signals import STOP_SIGNALS

FORWARDED = STOP_SIGNALS  # whatever stops `runner run` politely reaches it through `submit` too
POLL_S = 1.0
CANCEL_WAIT_S = 120.0  # an emergency save of a large state to a slow bucket takes a while


def run_command(job: Submission) -> list[str]:
    """The `runner run` command line for a submission (pure)."""
    asked = {"--quiet": job.quiet, "--fresh": job.fresh, "--overwrite": job.overwrite}
    flags = [flag for flag, on in asked.items() if on]
    return [sys.executable, "-m", "runner", "run", job.spec_path, *(f"--set={o}" for o in job.overrides), *flags]


class LocalBackend:
    def submit(self, job: Submission) -> int:
        """Run the job to completion in a child process; returns its exit code."""
        child = subprocess.Popen(run_command(job), start_new_session=True)
        previous = {sig: signal.signal(sig, lambda s, _: child.send_signal(s)) for sig in FORWARDED}
        try:
            code = child.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 128 - code if code < 0 else code  # killed by signal N: the shell's 128+N

    def status(self, run: str) -> dict[str, Any]:
        return summary.read(open_run(run))

    def logs(self, run: str, follow: bool = False) -> Iterator[str]:
        """log.txt's lines; with `follow`, new ones as they come, until the run ends."""
        run_dir = open_run(run)
        printed = 0
        while True:
            state, _ = summary.state_of(run_dir)  # before reading: the last lines are in once it has ended
            lines = run_dir.read_log()
            yield from lines[printed:]
            printed = max(printed, len(lines))
            if not follow or state != heartbeat.RUNNING:
                return
            time.sleep(POLL_S)

    def cancel(self, run: str) -> str:
        """SIGTERM the run's process (it saves a checkpoint and exits), and wait for it to end."""
        run_dir = open_run(run)
        state, status = summary.state_of(run_dir)
        if state != heartbeat.RUNNING:
            raise UserError(f"{run}: not running (state: {state}); nothing to cancel")
        if status.get("backend") != "local":
            raise UserError(
                f"{run}: runs on Kubernetes (job {status.get('job')}); cancel it with "
                f"runner cancel {status.get('job')} --backend k8s -n {status.get('namespace')}"
            )
        if status.get("host") != socket.gethostname():
            raise UserError(f"{run}: runs on host {status.get('host')}, not this one; cancel it there")
        pid = int(status["pid"])
        if not _is_runner(pid):
            raise UserError(f"{run}: its process {pid} is gone; the run will show as stale")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline:
            state, status = summary.state_of(run_dir)
            if state != heartbeat.RUNNING:
                return f"{run}: {state}" + (f" ({status['message']})" if status.get("message") else "")
            time.sleep(POLL_S / 4)
        raise RunFailed(f"{run}: sent SIGTERM to process {pid}, which has not ended after {CANCEL_WAIT_S:.0f} s")


def _is_runner(pid: int) -> bool:
    """Whether `pid` is alive and (where /proc says) a runner process: pids get reused."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process now
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"runner" in f.read()
    except FileNotFoundError:
        return True  # no /proc (macOS): alive is all we can tell
