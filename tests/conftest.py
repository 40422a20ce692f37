"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import write_mnist


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    return write_mnist(tmp_path / "data")


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    # Two threads on two shared cores stall when pytest or another process is busy.
    import torch

    torch.set_num_threads(1)
