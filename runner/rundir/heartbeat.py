"""What a live run tells the outside world: status.json (a heartbeat) and log.txt.

Both live in the run directory, so `runner ls/status/logs/cancel` work from the run
directory alone, wherever it is (a local dir, a bucket) and wherever the run was
(this machine, a pod that is gone). A run killed without warning (SIGKILL, a lost
node) cannot say so; its heartbeat stops, and `state()` reads an old heartbeat as
"stale" rather than "running" forever.

The files are written by a background thread: the training thread only appends log
lines to a list, so a slow bucket never slows a step. Object stores have no append,
so each write replaces the whole (small) file, never faster than GCS allows.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runner import storage
from runner.timebox import call_by, remaining

if TYPE_CHECKING:
    from runner.rundir.layout import RunDir

FLUSH_S = 2.0  # new log lines reach log.txt this often (GCS: <= 1 write/s per object)
HEARTBEAT_S = 10.0  # status.json is rewritten at least this often while running
STALE_AFTER_S = 60.0  # a heartbeat older than this: the process is gone (or cut off)

RUNNING, DONE, FAILED, PREEMPTED, STALE, UNKNOWN = "running", "done", "failed", "preempted", "stale", "unknown"
ABORTED = "aborted"  # a second Ctrl-C: stopped at once, without a checkpoint of its own
ENDED = (DONE, FAILED, PREEMPTED, ABORTED)


def state(status: dict[str, Any] | None, finished: bool, now: float) -> str:
    """A run's state from its status.json (None if it has none) and its metrics (pure).

    `finished`: metrics.jsonl ends with the final test record. Runs written before
    status.json existed are "done" or "unknown".
    """
    if status is None:
        return DONE if finished else UNKNOWN
    if status.get("state") == RUNNING and now - float(status.get("updated", 0)) > STALE_AFTER_S:
        return STALE
    return str(status.get("state", UNKNOWN))


def where() -> dict[str, Any]:
    """Where this process runs: enough to find it again (cancel) or look it up (k8s)."""
    here: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    job = os.environ.get("RUNNER_RUN_ID")  # set by the rendered Job (downward API)
    if os.environ.get("KUBERNETES_SERVICE_HOST") and job:
        namespace = storage.read_text("/var/run/secrets/kubernetes.io/serviceaccount/namespace").strip() or None
        return {**here, "backend": "k8s", "job": job, "namespace": namespace, "pod": here["host"]}
    return {**here, "backend": "local"}


class Heartbeat:
    """Keeps status.json and log.txt current while a run trains; `close()` writes the end."""

    def __init__(self, run_dir: RunDir, progress: Callable[[], dict[str, Any]]):
        """No I/O yet: lines logged before `start()` are kept, and bad input writes nothing."""
        self.run_dir = run_dir
        self.progress = progress  # read on the heartbeat thread: plain ints, no locking needed
        self.lines: list[str] = []
        self.status: dict[str, Any] = {}
        self._written_lines, self._beat_at = -1, -float("inf")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def start(self, info: dict[str, Any], resumed: bool) -> None:
        """Announce the run as running (first write), then keep announcing it."""
        earlier = self.run_dir.read_status() or {}
        with self._lock:  # a run's log spans its attempts: earlier ones' lines come first
            self.lines[:0] = self.run_dir.read_log()
        resumes = earlier.get("resumes", 0) + 1 if resumed else 0
        self.status = {**info, **where(), "state": RUNNING, "started": time.time(), "resumes": resumes}
        self._flush(force=True)
        self._thread.start()

    def _join(self, timeout: float | None = None) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def log(self, line: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with self._lock:
            self.lines.append(f"{stamp} {line}")

    def close(self, final_state: str, message: str = "", deadline: float | None = None) -> None:
        """Stop the thread and write the run's end (done, failed, preempted) and its last lines;
        TimeoutError if that is not done by `deadline` (time.monotonic() seconds)."""
        self._join(remaining(deadline))
        self.status.update(state=final_state, message=message)
        pause = max(0.0, self._beat_at + 1.0 - time.monotonic())  # GCS: one write/s per object
        time.sleep(min(pause, remaining(deadline) or pause))
        call_by(deadline, self._flush, True, name="status")

    def abandon(self) -> None:
        """Stop without a last write: another attempt owns the run directory now."""
        self._join()

    def _loop(self) -> None:
        while not self._stop.wait(FLUSH_S):
            # A missed heartbeat must never stop training; the next one retries.
            with contextlib.suppress(Exception):
                self._flush(force=time.monotonic() - self._beat_at >= HEARTBEAT_S)

    def _flush(self, force: bool) -> None:
        with self._lock:
            lines = list(self.lines)
        if len(lines) != self._written_lines:
            self.run_dir.write_log(lines)
            self._written_lines = len(lines)
        if force:
            self.status.update(self.progress(), updated=time.time())
            self.run_dir.write_status(self.status)
            self._beat_at = time.monotonic()
