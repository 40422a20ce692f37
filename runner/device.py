"""Where and how a job computes: device, precision, memory format, CPU threads.

The decisions are pure functions of what the machine offers, so every branch is
tested on a CPU-only machine; `select` is the thin edge that asks torch.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from runner.errors import UserError


@dataclass(frozen=True)
class Accelerators:
    cuda_count: int = 0
    cuda_bf16: bool = False
    mps: bool = False


@dataclass(frozen=True)
class Placement:
    device: str  # a torch device string: "cpu", "cuda:0", "mps"
    precision: str  # "fp32", "bf16" or "fp16": the autocast dtype, if any
    channels_last: bool

    @property
    def kind(self) -> str:
        return self.device.split(":")[0]


def resolve_device(requested: str, acc: Accelerators) -> str:
    """`auto` prefers CUDA, then MPS, then CPU; an absent accelerator is a user error."""
    if requested == "auto":
        return "cuda:0" if acc.cuda_count else "mps" if acc.mps else "cpu"
    if requested.startswith("cuda"):
        index = int(requested.partition(":")[2] or 0)
        if index >= acc.cuda_count:
            found = f"only {acc.cuda_count} CUDA device(s)" if acc.cuda_count else "no CUDA GPU"
            raise UserError(
                f'device: \'{requested}\' requested but this machine has {found}; set device = "auto" or "cpu"'
            )
        return f"cuda:{index}"
    if requested == "mps" and not acc.mps:
        raise UserError(
            'device: \'mps\' requested but Apple\'s MPS is not available here; set device = "auto" or "cpu"'
        )
    return requested


def resolve_precision(requested: str, device: str, acc: Accelerators) -> str:
    """`auto` means bf16 autocast where the GPU supports it, fp32 elsewhere."""
    kind = device.split(":")[0]
    if requested == "auto":
        return "bf16" if kind == "cuda" and acc.cuda_bf16 else "fp32"
    if requested == "fp16" and kind != "cuda":
        raise UserError(f"precision: fp16 (with loss scaling) needs a CUDA device, not {device}; use bf16 or fp32")
    if requested == "bf16" and kind == "cuda" and not acc.cuda_bf16:
        raise UserError("precision: this GPU has no bf16 support; use fp16 or fp32")
    return requested


def place(device: str, precision: str, acc: Accelerators) -> Placement:
    resolved = resolve_device(device, acc)
    # channels_last speeds up convolutions on CUDA tensor cores; on CPU it often does not.
    return Placement(resolved, resolve_precision(precision, resolved, acc), resolved.startswith("cuda"))


def cpu_budget(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may really use: its affinity, capped by a cgroup CPU quota.

    In a container os.cpu_count() reports the node's cores (say 64) even when the pod is
    limited to 2; that many threads on 2 cores makes PyTorch crawl.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def select(device: str, precision: str, threads: int) -> Placement:
    """Ask torch what this machine has, decide, and set the CPU thread count."""
    import torch

    cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    acc = Accelerators(
        cuda_count=cuda_count,
        cuda_bf16=bool(cuda_count) and torch.cuda.is_bf16_supported(),
        mps=torch.backends.mps.is_available(),
    )
    placement = place(device, precision, acc)
    torch.set_num_threads(threads or cpu_budget())
    return placement
