"""Where and how a job computes: device, precision, memory format, CPU threads, compiling.

The decisions are pure functions of what the machine offers, so every branch is
tested on a CPU-only machine; `select` is the thin edge that asks torch.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from collections.abc import Callable
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


def resolve_device(requested: str, acc: Accelerators, local_rank: int = 0, local_procs: int = 1) -> str:
    """`auto` prefers CUDA, then MPS, then CPU; an absent accelerator is a user error.

    Of `local_procs` processes on one machine (torchrun's), process `local_rank` takes
    GPU `local_rank`: `auto` and `cuda` mean that one, and one GPU cannot be named for all.
    """
    if local_procs > 1:
        return _device_of_process(requested, acc, local_rank, local_procs)
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


def _device_of_process(requested: str, acc: Accelerators, local_rank: int, local_procs: int) -> str:
    if requested == "cpu" or (requested == "auto" and not acc.cuda_count):
        return "cpu"  # MPS is one device, and gloo cannot reduce its tensors: several processes share the CPU
    if requested.startswith("cuda:"):
        raise UserError(
            f"device: '{requested}' names one GPU for all {local_procs} processes of this machine; "
            'set device = "cuda" (process N takes GPU N) or "auto"'
        )
    if requested == "mps":
        raise UserError(f'device: mps cannot be shared by {local_procs} processes; set device = "cpu" or "auto"')
    if local_procs > acc.cuda_count:
        raise UserError(
            f"resources.procs_per_node: {local_procs} processes need a GPU each, and this machine has "
            f"{acc.cuda_count}; set procs_per_node (or gpus) to at most {acc.cuda_count}"
        )
    return f"cuda:{local_rank}"


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


def place(device: str, precision: str, acc: Accelerators, local_rank: int = 0, local_procs: int = 1) -> Placement:
    resolved = resolve_device(device, acc, local_rank, local_procs)
    # channels_last speeds up convolutions on CUDA tensor cores, and on a CPU through oneDNN
    # (measured on one core: the MNIST CNN's step 1.35x faster, with runner/models/nets.py pooling
    # before ReLU; resnet18 unchanged; an MLP unaffected). MPS has had bugs with it.
    return Placement(resolved, resolve_precision(precision, resolved, acc), not resolved.startswith("mps"))


# The compilers torch.compile's code generators call, as they look for them: inductor's
# C++ for a CPU ($CXX, else g++; clang++ on macOS), and the C compiler Triton builds its
# CUDA kernel launcher with ($CC, else any of these).
COMPILERS = {
    "cpu": ("CXX", ("clang++",) if sys.platform == "darwin" else ("g++",)),
    "cuda": ("CC", ("cc", "gcc", "clang")),
}


def check_compile(kind: str, find: Callable[[str], str | None] = shutil.which) -> None:
    """Fail now, with the reason, if `compile = true` cannot work on a `kind` device here.

    Without a compiler the first training step would fail deep inside torch (the
    CUDA runtime images of PyTorch ship none). MPS and others are left to torch.
    """
    if kind not in COMPILERS:
        return
    variable, names = COMPILERS[kind]
    if os.environ.get(variable) or any(find(name) for name in names):
        return
    language = "C++" if kind == "cpu" else "C"
    raise UserError(
        f"compile: torch.compile on {kind} needs a {language} compiler ({' or '.join(names)} on PATH, "
        f"or ${variable}) and this machine has none; install one or set compile = false"
    )


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


def select(device: str, precision: str, threads: int, local_rank: int = 0, local_procs: int = 1) -> Placement:
    """Ask torch what this machine has, decide, and set the CPU thread count (`threads`, or
    this process's share of the cores when `local_procs` processes share the machine)."""
    import torch

    cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    acc = Accelerators(
        cuda_count=cuda_count,
        cuda_bf16=bool(cuda_count) and torch.cuda.is_bf16_supported(),
        mps=torch.backends.mps.is_available(),
    )
    placement = place(device, precision, acc, local_rank, local_procs)
    torch.set_num_threads(threads or max(1, cpu_budget() // local_procs))
    return placement
