"""Preemption: SIGTERM or SIGINT asks the run to stop at the next step boundary.

Kubernetes sends SIGTERM and SIGKILLs after the grace period (about 15 s on GKE spot
nodes), so the handler only sets a flag; the training and evaluation loops poll it,
save, and exit 143. A second SIGINT (an impatient Ctrl-C) aborts at once.
"""

from __future__ import annotations

import signal
from types import FrameType


class Preemption:
    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __call__(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> Preemption:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
