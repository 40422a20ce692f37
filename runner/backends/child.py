"""A child process that stops when this one is asked to: stop signals are passed on.

The child gets its own session, so a Ctrl-C in the terminal reaches it exactly once:
through this process. Used for `runner run` (one process) and for torchrun (several).
And it stops when this process dies, however it dies: a session of its own also means
that `kill -9 -- -PGID` (a terminal closing, `timeout -s KILL`, a batch scheduler) does
not reach it, and a training process reparented to init would hold its GPU and race the
resubmitted attempt for the run directory (EgoVerse #682, vllm-omni #2317). The kernel
sends it SIGTERM when its parent dies (Linux's PR_SET_PDEATHSIG), so it saves and ends.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import IO, NamedTuple

from runner.training.signals import STOP_SIGNALS

FORWARDED = STOP_SIGNALS  # whatever stops `runner run` politely reaches it through `submit` too
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def stop_with_parent(parent: int, signum: int = signal.SIGTERM) -> None:
    """Have the kernel send this process `signum` when `parent` (its parent's pid) dies.

    For Popen's preexec_fn (in the child, before exec: the setting survives exec) and for a
    process started by someone else's launcher (torchrun's workers bind themselves first
    thing). The signal comes when the thread that started this process ends, so start
    children from a thread that lives as long as its process (the main thread). If the
    parent is gone already (it died before this ran), the signal is sent now. Linux only;
    elsewhere nothing happens.
    """
    if not sys.platform.startswith("linux"):
        return
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        return  # not to be had (a seccomp filter): the run still works, as before
    if os.getppid() != parent:
        os.kill(os.getpid(), signum)


class Ended(NamedTuple):
    code: int  # the child's exit code in the shell's convention: 128+N when signal N killed it
    stopped: int | None  # the first stop signal passed on to it, if any
    killed_by: int | None  # the signal that killed it, if one did (a handler of its own would have exited)


def supervise(
    command: Sequence[str],
    env: Mapping[str, str] | None = None,
    check: Callable[[], int | None] | None = None,
    every_s: float = 0.5,
) -> Ended:
    """Run `command` to its end, passing on stop signals; how it ended.

    `check`, called every `every_s` seconds while the child runs, may return an exit code
    to end it early: the child is sent SIGTERM, waited for, and that code returned. The
    child's stderr then passes through this process, and what it writes once it is being
    ended is dropped: the reason was written before (torchrun answers SIGTERM with a
    traceback of its own, which would bury the one line that says what is wrong).
    """
    piped, parent = (subprocess.PIPE if check else None), os.getpid()
    child = subprocess.Popen(
        list(command),
        env=dict(env) if env is not None else None,
        start_new_session=True,
        stderr=piped,
        preexec_fn=lambda: stop_with_parent(parent),
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
                    return Ended(early, stopped[0] if stopped else None, None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return Ended(128 - code if code < 0 else code, stopped[0] if stopped else None, -code if code < 0 else None)


def _pass_on(stream: IO[bytes], ending: threading.Event) -> None:
    for line in stream:
        if not ending.is_set():
            sys.stderr.buffer.write(line)
            sys.stderr.flush()
