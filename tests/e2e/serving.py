"""A real `runner serve` process on loopback, for the server's tests and its benchmark."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.helpers import REPO

LISTENING = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")


class Server:
    """`runner serve RUN --port 0 ARGS...` in a process of its own; `url` once it listens.
    `log` collects its output lines (uvicorn logs to stderr, merged into stdout here)."""

    def __init__(self, run: str | Path, *args: str, cwd: Path, timeout: float = 60):
        self.log: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runner", "serve", str(run), "--port", "0", "--threads", "1", *args],
            cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        found = threading.Event()
        self.url = ""

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.log.append(line.rstrip("\n"))
                if not self.url and (m := LISTENING.search(line)):
                    self.url = m.group(1)
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(timeout) or not self.url:
            self.stop()
            raise AssertionError("runner serve did not start:\n" + "\n".join(self.log))

    def wait_ready(self, timeout: float = 60) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while httpx.get(f"{self.url}/readyz").status_code != 200:
            assert self.proc.poll() is None and time.monotonic() < deadline, "\n".join(self.log)
            time.sleep(0.05)

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
