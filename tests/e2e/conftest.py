"""End-to-end tests: the real `runner` command in subprocesses, real training, the GCS and
Kubernetes emulators. Every test in this folder is marked `slow`, so `pytest -m "not slow"`
runs the unit tests alone."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.slow)
