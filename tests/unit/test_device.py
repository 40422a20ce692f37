from __future__ import annotations

from pathlib import Path

import pytest

from runner.device import Accelerators, cpu_budget, place
from runner.errors import UserError

NONE = Accelerators()
ONE_GPU = Accelerators(cuda_count=1, cuda_bf16=True)
OLD_GPU = Accelerators(cuda_count=2, cuda_bf16=False)
MAC = Accelerators(mps=True)


@pytest.mark.parametrize(
    ("acc", "device"),
    [(NONE, "cpu"), (ONE_GPU, "cuda:0"), (MAC, "mps"), (Accelerators(cuda_count=1, mps=True), "cuda:0")],
)
def test_auto_prefers_cuda_then_mps_then_cpu(acc: Accelerators, device: str) -> None:
    assert place("auto", "auto", acc).device == device


@pytest.mark.parametrize(("requested", "acc"), [("cuda", NONE), ("cuda:1", ONE_GPU), ("mps", NONE), ("cuda:0", MAC)])
def test_an_absent_accelerator_is_a_user_error(requested: str, acc: Accelerators) -> None:
    with pytest.raises(UserError, match=f"device: '{requested}' requested"):
        place(requested, "auto", acc)


def test_cuda_index_is_kept() -> None:
    assert place("cuda:1", "fp32", OLD_GPU).device == "cuda:1"


@pytest.mark.parametrize(
    ("acc", "requested", "precision"),
    [(ONE_GPU, "auto", "bf16"), (OLD_GPU, "auto", "fp32"), (NONE, "auto", "fp32"), (MAC, "auto", "fp32"),
     (ONE_GPU, "fp16", "fp16"), (NONE, "bf16", "bf16"), (ONE_GPU, "fp32", "fp32")],
)  # fmt: skip
def test_precision(acc: Accelerators, requested: str, precision: str) -> None:
    assert place("auto", requested, acc).precision == precision


@pytest.mark.parametrize(("requested", "acc"), [("fp16", NONE), ("fp16", MAC), ("bf16", OLD_GPU)])
def test_unsupported_precision_is_a_user_error(requested: str, acc: Accelerators) -> None:
    with pytest.raises(UserError, match="precision: "):
        place("auto", requested, acc)


def test_channels_last_except_on_mps() -> None:
    assert place("auto", "auto", ONE_GPU).channels_last
    assert place("auto", "auto", NONE).channels_last  # oneDNN's convolutions: the CNN's step 1.3x faster
    assert not place("auto", "auto", MAC).channels_last


@pytest.mark.parametrize(("cpu_max", "cap"), [("150000 100000", 2), ("50000 100000", 1), ("max 100000", None)])
def test_cpu_budget_respects_a_container_quota(tmp_path: Path, cpu_max: str, cap: int | None) -> None:
    import os

    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    cores = len(os.sched_getaffinity(0))
    assert cpu_budget(tmp_path) == (min(cores, cap) if cap else cores)


def test_cpu_budget_without_cgroup_files(tmp_path: Path) -> None:
    assert cpu_budget(tmp_path / "absent") >= 1
