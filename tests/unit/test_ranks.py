"""A process's place in a job, from the launcher's environment (torchrun's variables)."""

from __future__ import annotations

import pytest

from runner.training.ranks import Rank


def test_without_torchrun_a_process_is_the_only_one_and_writes() -> None:
    assert Rank.detect({}) == Rank(0, 1, 0) and Rank.detect({}).is_writer


@pytest.mark.parametrize(("rank", "writes"), [(0, True), (1, False), (4, False), (7, False)])  # 4: LOCAL_RANK 0 of node 1
def test_only_rank_0_writes(rank: int, writes: bool) -> None:
    env = {"RANK": str(rank), "WORLD_SIZE": "8", "LOCAL_RANK": str(rank % 4), "LOCAL_WORLD_SIZE": "4"}
    assert Rank.detect(env) == Rank(rank, 8, rank % 4, 4) and Rank.detect(env).is_writer is writes


@pytest.mark.parametrize(
    "env",
    [
        {"RANK": "2", "WORLD_SIZE": "2"},
        {"RANK": "-1", "WORLD_SIZE": "2"},
        {"WORLD_SIZE": "two"},
        {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"},
    ],
    ids=["rank-past-the-end", "negative", "not-a-number", "local-rank-past-the-node"],
)
def test_values_that_do_not_fit_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        Rank.detect(env)
