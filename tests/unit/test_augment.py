"""Augmentation on the device (runner/data/augment.py): what each transform does to pixels,
and that the draws are a function of (seed, step) for the global batch alone."""

from __future__ import annotations

import pytest
import torch

from runner.data.augment import augment, shift
from runner.spec import load_spec
from tests.helpers import JOBS

IMAGE = (torch.arange(16, dtype=torch.uint8) + 1).reshape(1, 1, 4, 4)


def test_a_shift_moves_the_image_and_lets_zeros_in_at_the_edges() -> None:
    down = shift(IMAGE, torch.tensor([[1, 0]]))[0, 0]
    assert down[0].tolist() == [0, 0, 0, 0] and torch.equal(down[1:], IMAGE[0, 0, :3])
    left = shift(IMAGE, torch.tensor([[0, -1]]))[0, 0]
    assert left[:, -1].tolist() == [0, 0, 0, 0] and torch.equal(left[:, :3], IMAGE[0, 0, :, 1:])
    assert torch.equal(shift(IMAGE, torch.tensor([[0, 0]])), IMAGE)


def test_flips_mirror_about_half_the_images_and_keep_the_rest() -> None:
    batch = IMAGE.repeat(64, 3, 1, 1)
    out = augment(batch, ["flip"], seed=0, step=7)
    flipped = [torch.equal(o, batch[0].flip(-1)) for o in out]
    assert all(f or torch.equal(o, batch[0]) for f, o in zip(flipped, out, strict=True))
    assert 16 < sum(flipped) < 48


@pytest.mark.parametrize("names", [["flip"], ["crop"], ["translate"], ["flip", "crop", "translate"]])
def test_the_shares_of_a_global_batch_are_the_rows_of_the_whole_batch_augmented(names: list[str]) -> None:
    """What makes augmentation world-size independent: processes of a group augment their
    shares (tensor_split, the first ones longer) with the draws of the whole global batch."""
    batch = torch.randint(0, 256, (9, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    whole = augment(batch, names, seed=3, step=11)
    assert not torch.equal(whole, batch)
    for world in (2, 3):
        shares, offset = [], 0
        for part in batch.tensor_split(world):
            shares.append(augment(part, names, seed=3, step=11, offset=offset, total=len(batch)))
            offset += len(part)
        assert torch.equal(torch.cat(shares), whole), world


def test_draws_are_a_function_of_seed_and_step_alone() -> None:
    batch = torch.randint(0, 256, (32, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    names = ["flip", "crop", "translate"]
    torch.manual_seed(123)  # the global generator (dropout's) plays no part
    first = augment(batch, names, seed=0, step=5)
    torch.manual_seed(456)
    assert torch.equal(augment(batch, names, seed=0, step=5), first)
    assert not torch.equal(augment(batch, names, seed=0, step=6), first)
    assert not torch.equal(augment(batch, names, seed=1, step=5), first)
    assert augment(batch, [], seed=0, step=5) is batch  # off: the batch itself, no copy


def test_the_trainer_trains_on_augmented_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation: engine.py not passing the batch through augment() fails here."""
    from runner.training.events import Listener
    from runner.training.session import build_trainer

    spec = load_spec(
        str(JOBS / "digits.toml"),
        ["device=cpu", "threads=1", "epochs=1", "batch_size=256", "data.augment=['crop', 'flip']",
         "model_options={channels=[4,8],hidden=16}"],
    )  # fmt: skip
    trainer = build_trainer(spec)
    seen: list[torch.Tensor] = []
    step = trainer._step

    def recording(x: torch.Tensor, y: torch.Tensor, n: int) -> None:
        seen.append(x.clone())
        step(x, y, n)

    monkeypatch.setattr(trainer, "_step", recording)
    assert trainer.fit(Listener())
    from runner.training.engine import epoch_order

    order = epoch_order(len(trainer.train), spec.seed, 0)
    for s, x in enumerate(seen):
        plain = trainer.train.x.index_select(0, order[s * 256 : (s + 1) * 256])
        assert torch.equal(x, augment(plain, ["crop", "flip"], spec.seed, s, 0, len(plain))), s
        assert not torch.equal(x, plain), s
