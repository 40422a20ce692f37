"""Slow clients (uvicorn #1192): 300 loopback connections that send a request one byte every
2 s must not deny service. While they stay, /healthz, /readyz and a real /v1/predict answer
200 promptly; once the request deadline (10 s by default) has passed, the server has answered
each of them 408 and closed it, and holds no socket of theirs. Without a deadline every
request got 503 ("Exceeded concurrency limit") for as long as the slow clients stayed."""

from __future__ import annotations

import os
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.serving import Server
from tests.e2e.test_serve import digit_files

HEADS, BODIES = 280, 20  # slow request heads, and slow bodies after a complete head
EVERY_S = 2.0  # one byte per socket this often
DEADLINE_S = 10.0  # runner serve's default for a request's head (and a small body's)
PROMPT_S = 2.0  # a probe answered slower than this would fail a liveness probe's budget


class Dribble:
    """`HEADS + BODIES` sockets, each sending its request one byte every `EVERY_S` seconds from
    one thread; records when the server closed each and what it answered."""

    def __init__(self, host: str, port: int):
        self.stop = threading.Event()
        self.socks: list[socket.socket] = []
        self.sent: dict[socket.socket, bytes] = {}
        self.answers: dict[socket.socket, bytes] = {}
        self.closed: dict[socket.socket, float] = {}
        self.lock = threading.Lock()
        head = b"GET /healthz HTTP/1.1\r\nHost: slow\r\nX-Padding: " + b"x" * 200 + b"\r\n\r\n"
        body_head = b"POST /v1/predict HTTP/1.1\r\nHost: slow\r\nContent-Type: image/png\r\nContent-Length: 999\r\n\r\n"
        for i in range(HEADS + BODIES):
            sock = socket.create_connection((host, port), timeout=10)
            if i >= HEADS:  # a complete head at once: only the body is slow
                sock.sendall(body_head)
            sock.setblocking(False)
            self.socks.append(sock)
            self.sent[sock] = b""
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def open(self) -> int:
        with self.lock:
            return len(self.socks) - len(self.closed)

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        for sock in self.socks:
            selector.register(sock, selectors.EVENT_READ)
        next_byte = time.monotonic()
        while not self.stop.is_set() and self.open():
            if time.monotonic() >= next_byte:
                for sock in self.socks:
                    if sock not in self.closed:
                        try:
                            sock.send(b"x")
                        except OSError:
                            self._closed(selector, sock)
                next_byte += EVERY_S
            for key, _ in selector.select(timeout=0.1):
                sock = key.fileobj
                try:
                    data = sock.recv(4096)  # type: ignore[union-attr]
                except OSError:
                    data = b""
                if data:
                    self.answers[sock] = self.answers.get(sock, b"") + data  # type: ignore[index]
                else:
                    self._closed(selector, sock)  # type: ignore[arg-type]
        selector.close()

    def _closed(self, selector: selectors.BaseSelector, sock: socket.socket) -> None:
        with self.lock:
            self.closed.setdefault(sock, time.monotonic() - self.started)
        selector.unregister(sock)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        for sock in self.socks:
            sock.close()


def sockets_of(pid: int) -> int:
    """How many sockets the process `pid` holds (Linux: its fd table)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


def wait_for(condition, timeout: float, what: str, server: Server) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout} s\n" + "\n".join(server.log[-30:])
        time.sleep(0.05)


def client_ok(url: str) -> bool:
    return httpx.get(f"{url}/healthz", timeout=PROMPT_S * 5).status_code == 200


@pytest.fixture
def server(trained_runs: dict[str, Path], tmp_path: Path) -> Iterator[Server]:
    server = Server(trained_runs["finished"], "--watch", "0", cwd=tmp_path)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts the server's sockets in /proc")
def test_slow_clients_are_timed_out_while_probes_and_predictions_are_served(server: Server, tmp_path: Path) -> None:
    image = digit_files(tmp_path / "digits", 1)[0].read_bytes()
    url = urlsplit(server.url)
    baseline = sockets_of(server.proc.pid)
    load = Dribble(url.hostname or "127.0.0.1", url.port or 80)
    try:
        # Every slow connection accepted by the server (held, or closed already) before the probes go.
        def accepted() -> bool:
            return sockets_of(server.proc.pid) + HEADS + BODIES - load.open() >= baseline + HEADS + BODIES

        wait_for(accepted, 30, "every slow connection accepted", server)
        timings: dict[str, list[float]] = {"/healthz": [], "/readyz": [], "/v1/predict": []}
        with httpx.Client(base_url=server.url, timeout=PROMPT_S * 5) as client:
            for _ in range(5):
                for path in timings:
                    start = time.monotonic()
                    if path == "/v1/predict":
                        answer = client.post(path, content=image, headers={"Content-Type": "image/png"})
                    else:
                        answer = client.get(path)
                    timings[path].append(time.monotonic() - start)
                    assert answer.status_code == 200, (path, answer.status_code, answer.text)
                    if path == "/v1/predict":
                        assert answer.json()["predictions"][0]["top"]
        print({path: f"max {max(t) * 1000:.1f} ms" for path, t in timings.items()})
        # A client that leaves half-way through its body: nobody to answer, no traceback.
        with socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=10) as leaving:
            leaving.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + image[:10])
        assert client_ok(server.url)
        assert max(max(t) for t in timings.values()) < PROMPT_S, timings
        # ...while the slow clients stayed: the server answered them before their deadline.
        assert load.open() == HEADS + BODIES and time.monotonic() - load.started < DEADLINE_S - 1

        # After the deadline the server closes each of them, with a 408.
        wait_for(lambda: load.open() == 0, DEADLINE_S + 30, "every slow connection closed", server)
        closed_at = sorted(load.closed.values())
        print(f"slow connections closed from {closed_at[0]:.1f} s to {closed_at[-1]:.1f} s after they connected")
        assert closed_at[0] >= DEADLINE_S - 1, closed_at[0]
        timed_out = [s for s in load.socks if load.answers.get(s, b"").startswith(b"HTTP/1.1 408 ")]
        assert len(timed_out) == HEADS + BODIES, [load.answers.get(s, b"")[:40] for s in load.socks[:3]]
        wait_for(lambda: sockets_of(server.proc.pid) <= baseline + 2, 10, "the server's sockets released", server)
        assert client_ok(server.url)
        # One warning says what happened (a burst in one line), no traceback, no error.
        said = f"{HEADS} sent no complete request head in time (408)"
        wait_for(lambda: any(said in line for line in server.log), 10, "the summary logged", server)
        print(*(line for line in server.log if "WARNING" in line), sep="\n")
        log = "\n".join(server.log)
        assert f"{BODIES} sent no complete body in time (408)" in log, log
        assert "Traceback" not in log and "ERROR" not in log and log.count("WARNING") == 1, log
    finally:
        load.close()
