"""When to checkpoint, and uploading in the background while training goes on.

Saves are due every `every_steps` steps, every `every_seconds` seconds (Colab gives
no warning before it disconnects: there the default is shorter), and at each epoch end. The state is serialised
on the training thread, at a step boundary, so the bytes are consistent; the upload
and commit run on one background thread, at most one in flight. If the store is
down, training goes on and the save is retried later, with backoff. The emergency
save (on SIGTERM) and the final save are synchronous.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future

from runner.errors import RunFailed
from runner.rundir.checkpoints import Entry
from runner.rundir.writer import CheckpointWriter, Fenced
from runner.timebox import call_by, in_background, remaining

Snapshot = Callable[[], tuple[bytes, dict[str, int]]]  # -> (payload, position)


def due(step: int, now: float, last_step: int, last_time: float, every_steps: int, every_seconds: float) -> bool:
    """Whether a periodic save is due at `step`, `now` (monotonic seconds), given the last one (pure).
    A zero `every_*` turns that trigger off."""
    return bool(every_steps and step - last_step >= every_steps) or bool(
        every_seconds and now - last_time >= every_seconds
    )


# Colab takes a runtime away with no signal (idle timeouts, the 12-hour limit, "runtime
# disconnected"), so only periodic saves protect the work there: a disconnect costs at
# most this much training. A small model's save to Drive or a bucket takes about a second.
COLAB_EVERY_SECONDS = 120.0


def on_colab(env: Mapping[str, str] = os.environ) -> bool:
    """Whether this process runs on a Colab runtime: its VMs set COLAB_RELEASE_TAG and ship
    the google.colab package (a `runner` started from a notebook cell sees both)."""
    return "COLAB_RELEASE_TAG" in env or importlib.util.find_spec("google.colab") is not None


def save_every_seconds(configured: float, set_in_spec: bool, colab: bool) -> float:
    """The timed-save interval (seconds) to use: checkpoint.every_seconds as the spec says,
    or on Colab, where it was left at its default, COLAB_EVERY_SECONDS (pure)."""
    return COLAB_EVERY_SECONDS if colab and not set_in_spec else configured


class NotSavedInTime(RunFailed):
    """The store did not take a checkpoint before the deadline (a grace period running out)."""


class Checkpointer:
    def __init__(
        self,
        store: CheckpointWriter,
        snapshot: Snapshot,
        every_steps: int,
        every_seconds: float,
        step: int,
        log: Callable[[str], None],
    ):
        self.store, self.snapshot, self.log = store, snapshot, log
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self.last_step, self.last_time = step, time.monotonic()
        self.inflight: Future[Entry] | None = None
        self.pending = False  # a save was asked for (epoch end) or failed, and is still owed
        self.failures, self.retry_at = 0, 0.0

    def after_step(self, step: int, epoch_end: bool = False) -> None:
        """Start a background save if one is due and none is in flight. Never blocks."""
        self.pending |= epoch_end
        if self.inflight is not None:
            if not self.inflight.done():
                return  # at most one in flight; training goes on
            self._reap()
        now = time.monotonic()
        if now < self.retry_at:
            return
        if self.pending or due(step, now, self.last_step, self.last_time, self.every_steps, self.every_seconds):
            self.pending = False
            self.last_step, self.last_time = step, now
            payload, position = self.snapshot()
            # A daemon thread: an upload the store never answers cannot hold the process's exit.
            self.inflight = in_background(self.store.commit, payload, position, name="checkpoint")

    def save_now(self, step: int, attempts: int = 1, deadline: float | None = None) -> Entry:
        """Save synchronously (after any upload in flight); raise RunFailed if it cannot be done,
        NotSavedInTime if not by `deadline` (time.monotonic() seconds; None: no limit)."""
        self.wait(deadline)
        if self.store.entries and self.store.entries[0].step == step:
            return self.store.entries[0]  # the epoch-end save already holds this very state
        payload, position = self.snapshot()
        for attempt in range(attempts):
            try:
                entry = call_by(deadline, self.store.commit, payload, position, name="checkpoint")
                self.last_step, self.last_time, self.pending = position["step"], time.monotonic(), False
                return entry
            except Fenced:
                raise
            except TimeoutError:
                raise self._late(position["step"]) from None
            except Exception as e:
                if attempt == attempts - 1:
                    raise RunFailed(
                        f"could not save the checkpoint at step {position['step']} to {self.store.dir}: {e}"
                    ) from None
                delay = 2.0**attempt
                self.log(f"checkpoint at step {position['step']} failed ({e}); retrying in {delay:.0f} s")
                time.sleep(delay)
        raise AssertionError("unreachable")

    def wait(self, deadline: float | None = None) -> None:
        """Let the upload in flight finish (by `deadline`), and report how it went."""
        if self.inflight is not None:
            try:
                self.inflight.exception(timeout=remaining(deadline))  # waits
            except TimeoutError:
                raise self._late(None) from None
            self._reap()

    def close(self, deadline: float | None = None) -> None:
        """Let the upload in flight finish (until `deadline`), whatever its outcome: the run is
        ending anyway, and an upload left unfinished never becomes a checkpoint."""
        if self.inflight is not None:
            with contextlib.suppress(TimeoutError):
                self.inflight.exception(timeout=remaining(deadline))

    def _late(self, step: int | None) -> NotSavedInTime:
        what = f"the checkpoint at step {step}" if step is not None else "the upload in flight"
        return NotSavedInTime(f"{self.store.dir} did not take {what} in time")

    def _reap(self) -> None:
        future, self.inflight = self.inflight, None
        assert future is not None
        error = future.exception()
        if error is None:
            self.failures = 0
            return
        if isinstance(error, Fenced):
            raise error
        self.failures += 1
        backoff = min(60.0, 2.0**self.failures)
        self.pending, self.retry_at = True, time.monotonic() + backoff
        self.log(f"checkpoint failed ({error}); training goes on, retrying in {backoff:.0f} s")
