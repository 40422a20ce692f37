"""Test helpers: real files on disk and the real `runner` command in a subprocess."""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
import sys
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
