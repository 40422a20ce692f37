"""Work with a deadline: a call that must give up when a grace period runs out.

Kubernetes SIGKILLs a pod `terminationGracePeriodSeconds` after its SIGTERM (30 s by
default, about 15 s on a GKE spot node), however far its emergency checkpoint got; a
store that does not answer would otherwise hold the save in its retries for minutes.
The work runs on a daemon thread, so a call that overruns is abandoned to finish, or
to end with the process, and never holds the process's exit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


def in_background(fn: Callable[..., T], *args: Any, name: str = "background") -> Future[T]:
    """Start `fn(*args)` on a daemon thread; its Future."""
    future: Future[T] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to whoever reads the future
            future.set_exception(e)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def call_by(deadline: float | None, fn: Callable[..., T], *args: Any, name: str = "deadline") -> T:
    """`fn(*args)`, or TimeoutError if it has not returned by `deadline` (time.monotonic()
    seconds; None: no deadline, called on this thread)."""
    if deadline is None:
        return fn(*args)
    return in_background(fn, *args, name=name).result(timeout=max(0.0, deadline - time.monotonic()))


def remaining(deadline: float | None) -> float | None:
    """Seconds left until `deadline` (never negative), or None for no deadline."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())
