"""The process group of a distributed run: what the ranks share, and how long they wait for each other.

torchrun starts one `runner run` per process and tells each its rank (ranks.py). The
processes then talk through torch.distributed:
- on the device's backend (NCCL on CUDA, gloo on a CPU): DistributedDataParallel's
  gradient all-reduce, and each step's sums of the training metrics;
- on a gloo group on the CPU: the decision to stop, taken at every step boundary (a
  SIGTERM reaches the processes at slightly different steps; all stop at the same one),
  and rank 0's choice of checkpoint. A CPU collective never waits on the GPU's queue.

A one-process run gets `Solo`, whose operations do nothing, so the training loop has
one code path.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

import torch
from torch import nn

from runner.errors import PeerLost
from runner.training.ranks import Rank

# How long a collective waits for a peer before it fails: survivors of a lost node stop
# within about a minute instead of NCCL's default 30 minutes (pytorch #111646, #147064),
# and torchrun re-forms the group. Generous for a step: rank 0 serialising a checkpoint
# keeps the others waiting at the next collective (a few seconds for a large model).
COLLECTIVE_TIMEOUT_S = 60


class Solo:
    """The only process of a run: every collective is the identity."""

    rank, world_size = 0, 1

    def sum_(self, tensor: torch.Tensor) -> None:
        """Sum `tensor` over the ranks, in place."""

    def any(self, flag: bool) -> bool:
        """Whether `flag` is true on any rank (a collective: every rank must ask)."""
        return flag

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value`, on every rank (a picklable object)."""
        return value

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module to train: `model` itself, or DDP around it."""
        return model

    def close(self) -> None:
        pass


class Group(Solo):
    """This process's membership of a torch.distributed process group (torchrun's environment)."""

    def __init__(self, rank: Rank, device: torch.device):
        import torch.distributed as dist

        self.rank, self.world_size = rank.rank, rank.world_size
        timeout = datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S)
        if device.type == "cuda":
            # NCCL aborts a timed-out collective and raises (TORCH_NCCL_ASYNC_ERROR_HANDLING's
            # default since torch 2.2) instead of hanging.
            dist.init_process_group("nccl", timeout=timeout, device_id=device)
            self.control = dist.new_group(backend="gloo", timeout=timeout)
        else:
            dist.init_process_group("gloo", timeout=timeout)
            self.control = None  # the default group is gloo already
        self.dist = dist

    def sum_(self, tensor: torch.Tensor) -> None:
        self.dist.all_reduce(tensor)

    def any(self, flag: bool) -> bool:
        votes = torch.tensor([int(flag)])
        self.dist.all_reduce(votes, op=self.dist.ReduceOp.MAX, group=self.control)
        return bool(votes.item())

    def broadcast(self, value: Any) -> Any:
        box = [value]
        self.dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        if device.type == "cuda":
            # Per-process batch statistics would make the result depend on the world size.
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            return DistributedDataParallel(model, device_ids=[device])
        return DistributedDataParallel(model)

    def close(self) -> None:
        self.dist.destroy_process_group()


def join(rank: Rank, device: torch.device) -> Solo:
    """The group of a run of `rank.world_size` processes (Solo for one)."""
    return Group(rank, device) if rank.world_size > 1 else Solo()


# What gloo and NCCL say when a peer is gone or silent (they raise plain RuntimeErrors).
PEER_GONE = ("gloo/transport", "connection reset", "connection closed", "timed out", "timeout", "nccl", "broken pipe")


def lost_peer(error: BaseException) -> bool:
    """Whether `error`, raised by a collective, means another process of the job is gone."""
    import torch.distributed as dist

    if isinstance(error, dist.DistError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(words in text for words in PEER_GONE)


def peer_lost(error: Exception, step: int) -> PeerLost | None:
    """The PeerLost to raise for `error` at step `step` if it means a peer is gone, else None."""
    if not lost_peer(error):
        return None
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    # gloo's "[/__w/pytorch/.../pair.cc:545] Read error [host]:port: Connection reset by peer.
    # This is typically caused by ...": its source location and advice are no news to a user.
    first = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". ")[0][:160]
    return PeerLost(
        f"another process of this job is gone ({first}) at step {step}: this one stops; "
        "the job resumes from the newest checkpoint once its group re-forms"
    )
