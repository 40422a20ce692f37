"""Test helpers: real files on disk and the real `runner` command in a subprocess."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
JOBS = REPO / "jobs"


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an array in the IDX format MNIST ships in (unsigned bytes, big-endian dims)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = 600, n_test: int = 200) -> Path:
    """Real handwritten digits (scikit-learn's) as MNIST's raw IDX files under root/folder/raw.

    Upscaled 8x8 -> 28x28 with numpy alone, so the files do not depend on the code under test.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.kron(digits.images, np.ones((3, 3)))  # 24x24
    images = np.pad(images, ((0, 0), (2, 2), (2, 2))) * (255 / 16)
    labels = digits.target
    raw = root / folder / "raw"
    write_idx(raw / "train-images-idx3-ubyte", images[:n_train])
    write_idx(raw / "train-labels-idx1-ubyte", labels[:n_train])
    write_idx(raw / "t10k-images-idx3-ubyte", images[n_train : n_train + n_test])
    write_idx(raw / "t10k-labels-idx1-ubyte", labels[n_train : n_train + n_test])
    return root


def runner_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300):
    """Run the real `runner` command (as `python -m runner`) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def same_tensors(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class FlakyProxy:
    """A TCP proxy on loopback in front of a real server, whose link can be cut.

    `down()` resets every open connection and every new one, as a store in an outage
    would; `up()` relays bytes both ways again. It counts the connections it refused.
    """

    def __init__(self, target_port: int):
        import socket
        import threading

        self.target_port, self.is_up, self.refused = target_port, True, 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.open: set = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def down(self) -> None:
        with self.lock:
            self.is_up = False
            for sock in self.open:
                self._reset(sock)
            self.open.clear()

    def up(self) -> None:
        self.is_up = True

    @staticmethod
    def _reset(sock) -> None:
        import socket

        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # RST: "connection reset by peer"
        except OSError:
            pass

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            with self.lock:
                if not self.is_up:
                    self.refused += 1
                    self._reset(client)
                    continue
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
                self.open |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.close()

    def close(self) -> None:
        self.server.close()
        self.down()


def upload(local: Path, url: str) -> str:
    """A run directory's files, copied into a bucket (or any URL): the same run, there."""
    for path in local.rglob("*"):
        if path.is_file():
            from runner import storage

            storage.write_bytes(storage.join(url, path.relative_to(local).as_posix()), path.read_bytes())
    return url


# GCS's predefined object roles (https://cloud.google.com/storage/docs/access-control/iam-roles):
# what a careful user grants a training job. Neither has storage.buckets.get (the bucket's
# metadata) nor storage.buckets.list (the project's buckets).
OBJECT_ADMIN = frozenset(
    {"storage.objects.create", "storage.objects.delete", "storage.objects.get", "storage.objects.list"}
)
OBJECT_VIEWER = frozenset({"storage.objects.get", "storage.objects.list"})


def gcs_permission(method: str, path: str) -> str:
    """The IAM permission a GCS JSON API request needs (`path` without its query string);
    "unknown" for any request this map does not know, which IamProxy refuses too."""
    import re

    parts = path.strip("/").split("/")
    if parts[:3] == ["storage", "v1", "b"]:
        if len(parts) == 3:  # /storage/v1/b: the project's buckets, or a new one
            return {"GET": "storage.buckets.list", "POST": "storage.buckets.create"}.get(method, "unknown")
        if len(parts) == 4:  # /storage/v1/b/<bucket>: the bucket itself
            verbs = {"GET": "get", "PATCH": "update", "PUT": "update", "DELETE": "delete"}
            return f"storage.buckets.{verbs[method]}" if method in verbs else "unknown"
        if len(parts) == 5 and parts[4] == "o":  # /storage/v1/b/<bucket>/o: its objects
            return "storage.objects.list" if method == "GET" else "unknown"
        if len(parts) > 5 and parts[4] == "o":  # /storage/v1/b/<bucket>/o/<name>: one object
            verbs = {"GET": "get", "DELETE": "delete", "PATCH": "update", "PUT": "update"}
            return f"storage.objects.{verbs[method]}" if method in verbs else "unknown"
    if re.fullmatch(r"upload/storage/v1/b/[^/]+/o", path.strip("/")) and method in ("POST", "PUT"):
        return "storage.objects.create"
    if re.fullmatch(r"download/storage/v1/b/[^/]+/o/.+", path.strip("/")) and method == "GET":
        return "storage.objects.get"
    return "unknown"


class IamProxy:
    """An HTTP reverse proxy on loopback in front of the GCS emulator (which has no IAM) that
    grants a credential's permissions and no others: a request needing one it lacks gets the
    403 GCS answers, with GCS's JSON error naming the permission. Everything else is relayed.

    `requests` lists (method, path, permission) of every request; `denied` those refused.
    """

    def __init__(self, target: str, granted: frozenset[str] | set[str]):
        import http.client
        import http.server
        import json
        import threading
        from urllib.parse import urlparse

        upstream = urlparse(target)
        self.granted = set(granted)
        self.requests: list[tuple[str, str, str]] = []
        self.denied: list[tuple[str, str, str]] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as aiohttp expects

            def log_message(self, *args) -> None:
                pass

            def _relay(self) -> None:
                method, path = self.command, self.path.split("?", 1)[0]
                permission = gcs_permission(method, path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                proxy.requests.append((method, path, permission))
                if permission not in proxy.granted:
                    proxy.denied.append((method, path, permission))
                    message = (
                        f"runner-test@project.iam.gserviceaccount.com does not have {permission} access to the "
                        f"Google Cloud Storage bucket. Permission '{permission}' denied on resource "
                        "(or it may not exist)."
                    )
                    error = {"code": 403, "message": message, "errors": [
                        {"message": message, "domain": "global", "reason": "forbidden"}]}  # fmt: skip
                    self._answer(403, [("Content-Type", "application/json; charset=UTF-8")],
                                 json.dumps({"error": error}).encode())  # fmt: skip
                    return
                connection = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                    connection.request(method, self.path, body=body, headers=headers)
                    response = connection.getresponse()
                    data = response.read()
                    own = f"127.0.0.1:{proxy.port}"
                    kept = [
                        (k, v.replace(upstream.netloc, own) if k.lower() == "location" else v)
                        for k, v in response.getheaders()
                        if k.lower() not in ("transfer-encoding", "connection", "content-length")
                    ]
                    self._answer(response.status, kept, data)
                finally:
                    connection.close()

            def _answer(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _relay

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (through /proc), whatever session torchrun put them in."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and everything below it at once: a node lost, a pod deleted by force."""
    for victim in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


def commit_records(run_dir: Path) -> list[Path]:
    """The run's commit records, oldest first: not a local write's `.tmp-*.json`, which is
    there, empty or part-written, while a record is being written (runner's readers skip it
    the same way, rundir.checkpoints.record_key)."""
    from runner.rundir.checkpoints import record_key

    found = [(key, p) for p in (run_dir / "checkpoints" / "commits").glob("*.json") if (key := record_key(p.name))]
    return [p for _, p in sorted(found)]


class Process:
    """A process whose output (stdout and stderr) is collected, line by line, with times."""

    def __init__(self, command: list[str], cwd: Path | None = None, env: dict[str, str] | None = None):
        self.proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line))

    @property
    def out(self) -> str:
        return "".join(line for _, line in self.lines)

    def wait_for(self, pattern: str, timeout: float = 120) -> float:
        """When a line matching `pattern` came (waiting for it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, line in list(self.lines):
                if re.search(pattern, line):
                    return at
            assert self.proc.poll() is None or self.reader.is_alive(), f"ended without /{pattern}/:\n{self.out}"
            time.sleep(0.02)
        raise AssertionError(f"no /{pattern}/ in {timeout} s:\n{self.out}")

    def finish(self, timeout: float = 240) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_tree(self.proc.pid)
            raise AssertionError(f"hung:\n{self.out}") from None
        self.reader.join(10)
        return code


class Job(Process):
    """A `runner` process (submit or launch), its output collected."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str]):
        super().__init__([sys.executable, "-m", "runner", *args], cwd, env)
