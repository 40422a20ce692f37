"""The local backend: `runner run` in a child process on this machine.

The child is what a container would run, so a job behaves the same here and on a
cluster: `runner run` for one process, torchrun (backends/torchrun.py) for several.
Stop signals reach it through this process (backends/child.py).

status, logs and cancel read the run directory (status.json, log.txt) rather than
this process, so they work from another terminal, and for a run in a bucket.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

from runner.backends import torchrun
from runner.backends.api import Submission
from runner.backends.child import supervise
from runner.errors import RunFailed, UserError
from runner.rundir import heartbeat, summary
from runner.rundir.layout import open_run
from runner.spec_tables import ResourcesSpec
from runner.training.signals import stopped_while_starting

POLL_S = 1.0
CANCEL_MARGIN_S = 30.0  # past the run's grace period: its process's exit, a slow store's last answers


def run_args(job: Submission) -> list[str]:
    """`runner run`'s arguments for a submission (pure)."""
    asked = {"--quiet": job.quiet, "--fresh": job.fresh, "--overwrite": job.overwrite}
    flags = [flag for flag, on in asked.items() if on]
    return ["run", job.spec_path, *(f"--set={o}" for o in job.overrides), *flags]


def run_command(job: Submission) -> list[str]:
    """The `runner run` command line for a submission (pure)."""
    return [sys.executable, "-m", "runner", *run_args(job)]


class LocalBackend:
    def submit(self, job: Submission) -> int:
        """Run the job to completion in child processes (torchrun's, for more than one);
        returns its exit code."""
        res = job.spec.resources
        if res.nodes > 1:
            raise UserError(
                f"resources.nodes = {res.nodes}: the local backend runs one node; submit with --backend k8s, "
                "or run `runner launch SPEC --node-rank N --rdzv-endpoint HOST:PORT` on each machine"
            )
        if res.world_size > 1:
            return torchrun.launch(run_args(job), torchrun.Node(1, res.procs, run_id=job.spec.name), res.grace_seconds)
        ended = supervise(run_command(job))
        if ended.stopped is not None and ended.killed_by == ended.stopped:
            # The stop came before `runner run` had a handler for it (its interpreter was starting):
            # it died by the signal, saying nothing. Nothing had trained.
            print(stopped_while_starting(ended.stopped), file=sys.stderr, flush=True)
        return ended.code

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
        # As long as the run itself may take to save: its spec's grace period (an emergency
        # save of a large state to a slow bucket takes a while), not a wait of our own.
        grace = ((run_dir.read_spec() or {}).get("resources") or {}).get("grace_seconds", ResourcesSpec().grace_seconds)
        waited = float(grace) + CANCEL_MARGIN_S
        deadline = time.monotonic() + waited
        while time.monotonic() < deadline:
            state, status = summary.state_of(run_dir)
            if state != heartbeat.RUNNING:
                return f"{run}: {state}" + (f" ({status['message']})" if status.get("message") else "")
            time.sleep(POLL_S / 4)
        raise RunFailed(f"{run}: sent SIGTERM to process {pid}, which has not ended after {waited:.0f} s")


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
