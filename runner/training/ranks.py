"""This process's place in a job: its rank, the world size, and whether it writes.

Launchers tell each process its place through the environment (torchrun sets RANK,
WORLD_SIZE and LOCAL_RANK; an Indexed Job gives each pod its index). Only rank 0
writes the run directory: checkpoints, metrics.jsonl, status.json, log.txt and the
final weights. Pattern after Lightning's `TorchElasticEnvironment.detect()`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Rank:
    rank: int = 0  # 0 .. world_size - 1, across every node
    world_size: int = 1  # processes in the job
    local_rank: int = 0  # on this node: which GPU is this process's
    local_world_size: int = 1  # processes on this node: they share its CPU cores

    @property
    def is_writer(self) -> bool:
        """Whether this process writes the run directory (rank 0, and only it)."""
        return self.rank == 0

    @staticmethod
    def detect(env: Mapping[str, str] = os.environ) -> Rank:
        """Read torchrun's variables; without them, the only process of a one-process job.

        Raises ValueError for values that are not integers or do not fit together.
        """
        if "WORLD_SIZE" not in env:
            return Rank()
        local_rank = int(env.get("LOCAL_RANK", "0"))
        local_world_size = int(env.get("LOCAL_WORLD_SIZE", str(local_rank + 1)))
        rank = Rank(int(env.get("RANK", "0")), int(env["WORLD_SIZE"]), local_rank, local_world_size)
        if not 0 <= rank.rank < rank.world_size or not 0 <= rank.local_rank < rank.local_world_size:
            raise ValueError(
                f"RANK={rank.rank}, LOCAL_RANK={rank.local_rank} do not fit WORLD_SIZE={rank.world_size}, "
                f"LOCAL_WORLD_SIZE={rank.local_world_size}"
            )
        return rank
