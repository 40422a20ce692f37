"""A child process that stops when this one is asked to: stop signals are passed on.

The child gets its own session, so a Ctrl-C in the terminal reaches it exactly once:
through this process. Used for `runner run` (one process) and for torchrun (several).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import IO

from runner.training.signals import STOP_SIGNALS

FORWARDED = STOP_SIGNALS  # whatever stops `runner run` politely reaches it through `submit` too


def supervise(
    command: Sequence[str],
    env: Mapping[str, str] | None = None,
    check: Callable[[], int | None] | None = None,
    every_s: float = 0.5,
) -> tuple[int, bool]:
    """Run `command` to its end, passing on stop signals. Returns (its exit code in the
    shell's convention, 128+N when killed by signal N; whether a stop signal was passed on).

    `check`, called every `every_s` seconds while the child runs, may return an exit code
    to end it early: the child is sent SIGTERM, waited for, and that code returned. The
    child's stderr then passes through this process, and what it writes once it is being
    ended is dropped: the reason was written before (torchrun answers SIGTERM with a
    traceback of its own, which would bury the one line that says what is wrong).
    """
    piped = subprocess.PIPE if check else None
    child = subprocess.Popen(
        list(command), env=dict(env) if env is not None else None, start_new_session=True, stderr=piped
    )
    ending = threading.Event()
    if check:
        threading.Thread(target=_pass_on, args=(child.stderr, ending), daemon=True).start()
    stopped: list[int] = []

    def forward(signum: int, _: object) -> None:
        stopped.append(signum)
        child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        while True:
            try:
                code = child.wait(timeout=every_s if check else None)
                break
            except subprocess.TimeoutExpired:
                assert check is not None
                if (early := check()) is not None:
                    ending.set()
                    child.terminate()
                    child.wait()
                    return early, bool(stopped)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return (128 - code if code < 0 else code), bool(stopped)


def _pass_on(stream: IO[bytes], ending: threading.Event) -> None:
    for line in stream:
        if not ending.is_set():
            sys.stderr.buffer.write(line)
            sys.stderr.flush()
