"""The learning rate is a function of (spec, step): an interrupted run gets the very rates
an uninterrupted one does, and an extended run the rates of a fresh run of the new length
(pytorch #78003: a recursive scheduler re-targeted after a resume stays at 0 or drifts)."""

from __future__ import annotations

import math

import pytest
import torch

from runner.spec import load_spec
from runner.training.engine import Trainer, learning_rate
from runner.training.events import Listener
from runner.training.session import build_trainer
from tests.helpers import JOBS

SCHEDULES = ["constant", "cosine"]
SMALL = ["device=cpu", "threads=1", "model=mlp", "model_options={hidden=[16]}", "batch_size=128"]
BATCHES = 11  # 1294 training digits in batches of 128


class Rates(Listener):
    """The learning rate each step used, by step."""

    def __init__(self, trainer: Trainer):
        self.trainer, self.by_step = trainer, {}

    def step(self, batch: int, running: object) -> None:
        self.by_step[self.trainer.state.step - 1] = self.trainer.state.optimizer.param_groups[0]["lr"]


def trainer(schedule: str, epochs: int) -> Trainer:
    return build_trainer(load_spec(str(JOBS / "digits.toml"), [*SMALL, f"lr_schedule={schedule}", f"epochs={epochs}"]))


def fit(t: Trainer, until_step: int | None = None) -> dict[int, float]:
    rates = Rates(t)
    t.fit(rates, (lambda: t.state.step >= until_step) if until_step is not None else (lambda: False))
    return rates.by_step


def test_cosine_in_closed_form() -> None:
    assert learning_rate(0.1, "cosine", 0, 100) == 0.1
    assert learning_rate(0.1, "cosine", 50, 100) == pytest.approx(0.05)
    assert learning_rate(0.1, "cosine", 100, 100) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(0.1, "cosine", 25, 100) == pytest.approx(0.05 * (1 + math.cos(math.pi / 4)))
    assert learning_rate(0.1, "constant", 99, 100) == 0.1


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_an_interrupted_run_gets_the_same_rate_at_every_step(schedule: str) -> None:
    fresh = fit(trainer(schedule, 3))
    first = trainer(schedule, 3)
    before = fit(first, until_step=BATCHES + 4)  # stopped inside epoch 2
    second = trainer(schedule, 3)
    second.restore(first.state.state_dict())
    after = fit(second)
    assert {**before, **after} == fresh and len(fresh) == 3 * BATCHES


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("stop", [2 * BATCHES, BATCHES + 4], ids=["finished", "mid-run"])
def test_an_extended_run_gets_a_fresh_runs_rates_from_where_it_resumes(schedule: str, stop: int) -> None:
    fresh = fit(trainer(schedule, 4))
    short = trainer(schedule, 2)
    fit(short, until_step=stop)
    before = {k: v.clone() for k, v in short.state.model.state_dict().items()}
    longer = trainer(schedule, 4)  # resubmitted with --set epochs=4
    longer.restore(short.state.state_dict())
    after = fit(longer)
    assert after == {step: rate for step, rate in fresh.items() if step >= stop}
    assert min(after.values()) > 0  # it trains: the rates never hit 0 before the new end
    moved = [not torch.equal(before[k], v) for k, v in longer.state.model.state_dict().items()]
    assert all(moved), "the extension left weights where they were"
