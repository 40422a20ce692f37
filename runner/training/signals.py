"""Preemption: a polite stop signal asks the run to stop at the next step boundary.

Every signal a platform sends to stop a job politely stops it politely: SIGTERM
(Kubernetes, `runner cancel`, systemd, docker stop), SIGINT (Ctrl-C) and SIGHUP (a
closed terminal, a dropped SSH session; mmsegmentation #1998 lost runs to it).
Kubernetes SIGKILLs after the grace period (about 15 s on GKE spot nodes), so the
handler only sets a flag; the training and evaluation loops poll it, save, and exit
143. A second SIGINT (an impatient Ctrl-C) aborts at once.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
TRAINING_COMMANDS = ("run", "submit", "launch")  # the commands a stop signal may find starting


def stopped_while_starting(signum: int) -> str:
    """The one line of a run stopped before it trained a step: there is nothing to save."""
    name = signal.Signals(signum).name
    return f"stopped by {name} while starting, before training: nothing to save; resubmit to go on"


def stop_while_starting(argv: Sequence[str]) -> None:
    """For a training command (`argv[1]` in TRAINING_COMMANDS): until the run puts its own
    handler in place (Preemption, or the launcher's passing on of signals), a stop signal
    ends this process at once, exit 143, with the one line saying so. Nothing has trained,
    so nothing is lost; without this a SIGTERM during start-up (imports, torchrun's
    rendezvous, loading data) ends the process by the signal: no line, under torchrun no
    recorded exit code, so the launcher reported a failure (exit 1) and no retry was free.
    Under torchrun, rank 0 alone prints the line; every worker records its code.
    """
    if len(argv) < 2 or argv[1] not in TRAINING_COMMANDS:
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        from runner import outcomes
        from runner.errors import Exit

        outcomes.record(Exit.PREEMPTED)
        if os.environ.get("RANK", "0") == "0":
            print(stopped_while_starting(signum), file=sys.stderr, flush=True)
        os._exit(Exit.PREEMPTED)  # no cleanup to wait for: nothing was started that needs it

    for sig in STOP_SIGNALS:
        signal.signal(sig, stop)


def ignore_stop_signals() -> None:
    """Once the run has ended (done, or stopped and saved), the process is on its way out
    with its exit code: a stop signal now must neither change it nor print another line."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class StopNow(BaseException):
    """Raised by the stop signal's handler itself when the run has nothing to save (nothing
    trained since its newest checkpoint): whatever the process is busy with, even a minute of
    torch.compile, is abandoned at once. A BaseException, so no `except Exception` holds it."""


class Preemption:
    def __init__(self) -> None:
        self.signum: int | None = None  # the first stop signal: what the run says stopped it
        self.at: float | None = None  # when it came (time.monotonic()): the grace period runs from here
        self.aborting = False
        # Set by the session once it knows: True while the state is its newest checkpoint's.
        self.nothing_to_save: Callable[[], bool] = lambda: False
        self._previous: dict[int, object] = {}

    def __call__(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> Preemption:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            if self.aborting:
                return  # more Ctrl-C while the abort records itself: it is already on its way
            self.aborting = True
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum, self.at = signum, time.monotonic()
            if self.nothing_to_save():  # e.g. still compiling the first step: don't wait for it
                self.aborting = True  # on its way out already, losing nothing: more Ctrl-C change nothing
                raise StopNow
