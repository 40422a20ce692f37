"""Ranks > 0 of a distributed run: they train in step with rank 0 and write nothing.

Rank 0 (session.py) claims the run directory, chooses the checkpoint to resume from,
and writes everything; the others load that checkpoint and train. Their weights are
rank 0's at every step (DDP), so whatever rank 0 saves is every rank's state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from runner.errors import Diverged, Exit, RunFailed
from runner.training.distributed import peer_lost
from runner.training.signals import StopNow

if TYPE_CHECKING:
    from runner.rundir.checkpoints import Entry
    from runner.rundir.layout import RunDir
    from runner.training.engine import Trainer


def resume_like_rank_0(trainer: Trainer, run_dir: RunDir, resumed: Entry | None) -> None:
    """Load the checkpoint rank 0 resumed from, if any. (Its weights reached every rank with
    DDP's first broadcast; the optimizer, the position and the metrics come from the file.)"""
    from runner.rundir.checkpoints import Corrupt

    if resumed is None:
        return
    try:
        trainer.restore(run_dir.checkpoint_index().load(resumed)["state"])
    except Corrupt as e:
        raise RunFailed(f"could not read the checkpoint at step {resumed.step} that rank 0 resumed from: {e}") from None


def follow(trainer: Trainer, stop: Callable[[], bool]) -> int:
    """Train to the end (0) or to the group's agreed stop (143); 3 when the run diverged."""
    from runner.training.events import Listener

    try:
        finished = trainer.fit(Listener(), stop)
        tested = finished and trainer.evaluate(trainer.test, stop) is not None
    except StopNow:
        return Exit.PREEMPTED
    except Diverged:
        return Exit.DIVERGED  # rank 0 says why: the metrics it checked are every rank's
    except Exception as e:
        if (lost := peer_lost(e, trainer.state.step)) is None:
            raise
        raise lost from None
    return Exit.OK if tested else Exit.PREEMPTED
