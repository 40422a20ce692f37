"""Child processes, measured from the outside: wall time, peak memory, output as it arrives.

Each measured thing runs in a process of its own, so its peak resident memory
(ru_maxrss, from wait4) is its own, and wall time covers everything a user waits
for: interpreter start, imports, data loading, training, saving, exit.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


@dataclass(frozen=True)
class Finished:
    returncode: int
    wall_s: float  # from just before the fork to the exit
    max_rss_mb: float  # peak resident memory of the child (ru_maxrss)
    output: str  # stdout and stderr, interleaved


class Child:
    """A subprocess whose output is collected by a thread as it arrives, so that the
    moment a line appears can be timed while the child runs.

    With `terminal=True` its output is a pseudo-terminal, so `runner` draws its live
    progress bar: the only thing it prints after each step.
    """

    def __init__(self, args: list[str], env: dict[str, str] | None = None, terminal: bool = False):
        env = {**os.environ, **(env or {})}
        self.text, self.eof, self.changed = "", False, threading.Condition()
        if terminal:
            reader, writer = pty.openpty()
            # A wide terminal, so that the bar's "step/steps" column is drawn.
            fcntl.ioctl(writer, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
            env.update(COLUMNS="200", TERM="xterm")
            out = writer
        else:
            reader, out = os.pipe()
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, cwd=REPO)
        os.close(out)
        self.reader = threading.Thread(target=self._read, args=(reader,), daemon=True)
        self.reader.start()

    def _read(self, fd: int) -> None:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # a pseudo-terminal reports EIO once the child has gone
                chunk = b""
            with self.changed:
                if not chunk:
                    self.eof = True
                    self.changed.notify_all()
                    break
                self.text += ANSI.sub("", chunk.decode(errors="replace"))
                self.changed.notify_all()
        os.close(fd)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def wait_for(self, pattern: str, timeout: float = 600) -> tuple[float, re.Match[str]]:
        """Seconds since start when `pattern` first appeared in the output, and the match."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        with self.changed:
            while not (match := regex.search(self.text)):
                if self.eof or time.monotonic() > deadline:
                    self.proc.kill()
                    raise RuntimeError(f"never printed {pattern!r}; output:\n{self.text[-3000:]}")
                self.changed.wait(0.5)
            return self.elapsed(), match

    def signal(self, signum: int = signal.SIGTERM) -> float:
        """Send a signal; returns when, in seconds since start."""
        self.proc.send_signal(signum)
        return self.elapsed()

    def finish(self, timeout: float = 3600) -> Finished:
        """Wait for the exit (killing the child after `timeout`) and reap it with its resource usage."""
        timer = threading.Timer(timeout, self.proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(self.proc.pid, 0)
        finally:
            timer.cancel()
        wall = self.elapsed()
        self.proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        self.reader.join(10)
        return Finished(self.proc.returncode, wall, usage.ru_maxrss / 1024, self.text)


def run(args: list[str], env: dict[str, str] | None = None, timeout: float = 3600) -> Finished:
    """Run to completion; a failure is an error that shows the child's output."""
    done = Child(args, env).finish(timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode}:\n{done.output[-3000:]}")
    return done


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def runner_command(*args: str) -> list[str]:
    """The real `runner` command, as a user runs it (the console script's module)."""
    return python("-m", "runner", *args)
