"""The engine on real data (scikit-learn's digits): it learns, it is deterministic, and
its state object is complete — a run stopped anywhere and restored from
`state_dict()` ends bitwise identical to one that never stopped."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch

from runner.device import COMPILERS, check_compile
from runner.errors import UserError
from runner.spec import load_spec
from runner.training.engine import Trainer, epoch_order
from runner.training.events import Listener
from runner.training.session import build_trainer
from tests.helpers import JOBS


def trainer(*overrides: str) -> Trainer:
    return build_trainer(load_spec(str(JOBS / "digits.toml"), ["device=cpu", "threads=1", *overrides]))


def stop_at(step: int, t: Trainer):
    return lambda: t.state.step >= step


def reload(t: Trainer, *overrides: str) -> Trainer:
    """A new trainer, restored from `t`'s state the way a checkpoint file would restore it."""
    buffer = io.BytesIO()
    torch.save(t.state.state_dict(), buffer)
    buffer.seek(0)
    fresh = trainer(*overrides)
    fresh.state.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh


def same_weights(a: Trainer, b: Trainer) -> bool:
    sa, sb = a.state.model.state_dict(), b.state.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def without_timing(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in history]


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch() -> None:
    a = epoch_order(1000, seed=1, epoch=0)
    assert sorted(a.tolist()) == list(range(1000))
    assert torch.equal(a, epoch_order(1000, seed=1, epoch=0))
    assert not torch.equal(a, epoch_order(1000, seed=1, epoch=1))
    assert not torch.equal(a, epoch_order(1000, seed=2, epoch=0))


def test_it_learns() -> None:
    t = trainer("model=mlp", "model_options={}", "epochs=3")
    assert t.fit(Listener())
    losses = [r["train_loss"] for r in t.state.history]
    assert losses[0] > losses[1] > losses[2]
    assert t.state.history[-1]["val_acc"] > 0.85
    _, test_acc = t.evaluate(t.test)
    assert test_acc > 0.85  # chance is 0.10
    assert [r["epoch"] for r in t.state.history] == [1, 2, 3]
    assert t.state.step == 3 * t.batches


def test_same_spec_and_seed_give_bitwise_identical_weights() -> None:
    a, b = trainer("epochs=1"), trainer("epochs=1")
    a.fit(Listener())
    b.fit(Listener())
    assert same_weights(a, b)
    c = trainer("epochs=1", "seed=1")
    c.fit(Listener())
    assert not same_weights(a, c)


RESUMABLE = [
    # cnn: dropout draws from the RNG; adam keeps moments.
    ("model=cnn", "optimizer=adam"),
    # mlp with dropout, sgd with momentum, and a per-step cosine schedule.
    ("model=mlp", "model_options={dropout = 0.2}", "optimizer=sgd", "lr=0.05", "lr_schedule=cosine"),
]


@pytest.mark.parametrize("setup", RESUMABLE, ids=["cnn-adam", "mlp-sgd-cosine"])
def test_stopped_and_restored_anywhere_ends_identical(setup: tuple[str, ...]) -> None:
    overrides = ("epochs=2", "batch_size=64", *setup)
    straight = trainer(*overrides)
    assert straight.fit(Listener())
    batches = straight.batches  # 21

    # Two stops inside the first epoch, one during its evaluation (spd #741: preemptions
    # there saved nothing), one inside the second: each restored from a serialised state
    # into a freshly built trainer (a new process, in effect).
    t = trainer(*overrides)
    for stop in (5, 12, batches, batches + 3):
        assert not t.fit(Listener(), stop_at(stop, t))
        assert t.state.step == stop
        if stop == batches:  # stopped in the evaluation, not after it at the next epoch's start
            assert (t.state.epoch, t.state.batch, t.state.history) == (0, batches, [])
        t = reload(t, *overrides)
    assert t.fit(Listener())

    assert same_weights(straight, t)
    assert without_timing(t.state.history) == without_timing(straight.state.history)
    assert t.evaluate(t.test) == straight.evaluate(straight.test)


def test_restoring_overwrites_a_different_initialisation() -> None:
    t = trainer("epochs=1")
    assert not t.fit(Listener(), stop_at(3, t))
    restored = reload(t, "seed=7")  # built from another seed, then restored
    assert same_weights(t, restored)
    assert (restored.state.epoch, restored.state.batch, restored.state.step) == (0, 3, 3)


def test_the_loss_scaling_path_scales_and_unscales_exactly() -> None:
    # fp16 with loss scaling needs CUDA; its branch of the step runs here with a CPU scaler.
    # In fp32 a power-of-two scale is undone exactly (inside the fused optimizer step).
    plain, scaled = trainer("epochs=1"), trainer("epochs=1")
    scaled.state.scaler = torch.amp.GradScaler("cpu", enabled=True)
    for t in (plain, scaled):
        assert not t.fit(Listener(), stop_at(6, t))
    assert scaled.state.scaler.get_scale() == 2.0**16  # no overflow seen, so never backed off
    assert same_weights(plain, scaled)


@pytest.mark.parametrize("direction", ["into-fp16", "out-of-fp16"])
def test_a_resume_may_enter_or_leave_loss_scaling(direction: str) -> None:
    # precision may change on resume; fp16 (a loss-scaling GradScaler) needs CUDA, so its
    # scaler runs here as a CPU one. An fp32/bf16 checkpoint holds an empty scaler state,
    # which an enabled scaler refused to load ("The source state dict is empty").
    scaling = torch.amp.GradScaler("cpu", enabled=True)
    saved, resumed = trainer("epochs=1"), trainer("epochs=1")
    (saved if direction == "out-of-fp16" else resumed).state.scaler = scaling
    assert not saved.fit(Listener(), stop_at(3, saved))
    resumed.restore(saved.state.state_dict())
    assert same_weights(saved, resumed) and resumed.state.step == 3
    assert resumed.fit(Listener())  # and it trains on, to the end
    if direction == "into-fp16":
        assert resumed.state.scaler.get_scale() == 2.0**16  # a fresh scale: the checkpoint had none


def test_bf16_autocast_trains_fp32_weights_deterministically() -> None:
    # The GPU default (bf16 autocast) runs here on the CPU's autocast: same code path.
    a, b = trainer("precision=bf16", "epochs=2"), trainer("precision=bf16", "epochs=2")
    for t in (a, b):
        assert t.fit(Listener())
    assert a.amp_dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in a.state.model.parameters())  # master weights stay fp32
    assert same_weights(a, b)
    assert a.state.history[-1]["val_acc"] > 0.5  # chance is 0.10
    fp32 = trainer("epochs=2")
    fp32.fit(Listener())
    assert not same_weights(a, fp32)  # autocast did change the arithmetic


HOST_SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")


def test_a_training_step_never_waits_for_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    # On a GPU, reading a tensor's value on the host (loss.item(), a comparison in an if)
    # waits for every queued kernel: a step that did so would leave the GPU idle each step.
    # Steps mid-epoch must read nothing; the epoch's means are read once at its end.
    t = trainer("epochs=1")
    reads: list[str] = []
    for name in HOST_SYNCS:
        original = getattr(torch.Tensor, name)

        def counting(self: torch.Tensor, *args: Any, _name: str = name, _original: Any = original) -> Any:
            reads.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counting)
    assert not t.fit(Listener(), stop_at(10, t))
    assert t.state.step == 10 and reads == []
    t.state.running.means()
    assert reads == ["item", "item"]  # the counting itself works


def test_compile_wraps_the_forward_pass_and_leaves_the_state_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch.compile for real, with dynamo's "eager" backend: the graph is captured and run
    # as captured, without inductor's C++ code generation (tens of seconds on a CPU).
    real_compile, compiled = torch.compile, []

    def eager_compile(model: torch.nn.Module, **kwargs: Any) -> Any:
        compiled.append(model)
        return real_compile(model, backend="eager", **kwargs)

    monkeypatch.setattr(torch, "compile", eager_compile)
    torch._dynamo.reset()
    try:
        plain, with_compile = trainer("epochs=1"), trainer("epochs=1", "compile=true")
        assert compiled == [with_compile.state.model] and plain.forward is plain.state.model
        for t in (plain, with_compile):
            assert not t.fit(Listener(), stop_at(4, t))
        assert same_weights(plain, with_compile)  # the same computation, compiled or not
        assert with_compile.evaluate(with_compile.test) == plain.evaluate(plain.test)
        # Checkpoints and weights hold the model's own names, not the compiled wrapper's.
        assert with_compile.state.state_dict()["model"].keys() == plain.state.state_dict()["model"].keys()
    finally:
        torch._dynamo.reset()


CXX = COMPILERS["cpu"][1][0]  # g++ (clang++ on macOS): what inductor calls


@pytest.mark.parametrize(
    ("kind", "on_path", "problem"),
    [
        ("cpu", {CXX}, None),
        ("cuda", {"cc"}, None),
        ("cpu", {"gcc", "cc"}, "compile: torch.compile on cpu needs a C\\+\\+ compiler"),  # C is not enough
        ("cuda", set(), "compile: torch.compile on cuda needs a C compiler"),  # PyTorch's runtime images
        ("mps", set(), None),  # left to torch
    ],
)
def test_compile_needs_a_compiler(
    kind: str, on_path: set[str], problem: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("CXX", raising=False)

    def find(name: str) -> str | None:
        return f"/usr/bin/{name}" if name in on_path else None

    if problem is None:
        check_compile(kind, find)
    else:
        with pytest.raises(UserError, match=problem):
            check_compile(kind, find)
    monkeypatch.setenv("CXX" if kind == "cpu" else "CC", "/opt/bin/my-compiler")
    check_compile(kind, find)  # the environment variable names one


SMALL = ["device=cpu", "threads=1", "batch_size=32", "model_options={channels=[8,16],hidden=64}"]
STEPS_PER_EPOCH = 41  # 1294 training digits in batches of 32


# -- each epoch's sample order -------------------------------------------------------------


def test_each_epoch_trains_on_the_batches_epoch_order_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation: training/engine.py `_fit` uses `epoch_order(n, self.cfg.seed, 0)`: epoch 2 repeats
    epoch 1's batches, which this test sees."""
    import torch

    from runner.spec import load_spec
    from runner.training.engine import epoch_order
    from runner.training.session import build_trainer

    seed, epochs = 3, 2  # not the default seed: the spec's seed is the one used
    t = build_trainer(load_spec(str(JOBS / "digits.toml"), [*SMALL, f"epochs={epochs}", f"seed={seed}"]))
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    step = t._step

    def recording(x: torch.Tensor, y: torch.Tensor, n: int) -> None:
        seen.append((x.clone(), y.clone()))
        step(x, y, n)

    monkeypatch.setattr(t, "_step", recording)

    assert t.fit(Listener())
    n, bs = len(t.train), t.cfg.batch_size
    assert t.batches == STEPS_PER_EPOCH and len(seen) == epochs * t.batches
    orders = [epoch_order(n, seed, e) for e in range(epochs)]
    assert not torch.equal(orders[0], orders[1])
    for e in range(epochs):
        for b in range(t.batches):
            x, y = seen[e * t.batches + b]
            idx = orders[e][b * bs : (b + 1) * bs]
            same = torch.equal(x, t.train.x.index_select(0, idx)) and torch.equal(y, t.train.y.index_select(0, idx))
            assert same, f"epoch {e + 1}, batch {b}: not the samples epoch_order({n}, {seed}, {e}) puts there"
    # What the trainer used really did differ between the epochs, batch by batch.
    assert not any(torch.equal(seen[b][1], seen[t.batches + b][1]) for b in range(t.batches - 1))


def test_the_processes_of_a_group_train_on_shares_of_the_same_global_batches_as_one_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At every step, rank 0's share followed by rank 1's is the batch one process trains on:
    the global sample order does not depend on the world size. Each rank is a trainer given
    its seat in a group of 2 (no process group: the data order needs none).
    Mutation: engine.py taking `idx[rank::world]` (strided shares) fails here."""
    import torch

    from runner.spec import load_spec
    from runner.training.distributed import Solo
    from runner.training.session import build_trainer

    class Seat(Solo):
        def __init__(self, rank: int, world_size: int):
            self.rank, self.world_size = rank, world_size

    def batches(rank: int, world: int) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        t = build_trainer(load_spec(str(JOBS / "digits.toml"), [*SMALL, "epochs=1", "batch_size=33"]))
        t.join(Seat(rank, world))
        seen: list[tuple[torch.Tensor, torch.Tensor, int]] = []
        step = t._step

        def recording(x: torch.Tensor, y: torch.Tensor, n: int) -> None:
            seen.append((x.clone(), y.clone(), n))
            step(x, y, n)

        monkeypatch.setattr(t, "_step", recording)
        assert t.fit(Listener())
        return seen

    one, shares = batches(0, 1), [batches(rank, 2) for rank in (0, 1)]
    assert len(one) == len(shares[0]) == len(shares[1]) == 40  # ceil(1294 / 33)
    for step, ((x, y, n), (x0, y0, n0), (x1, y1, n1)) in enumerate(zip(one, *shares, strict=True)):
        assert n == n0 == n1 == len(x), step  # every rank scales by the global batch's size
        assert len(x0) - len(x1) == len(x) % 2, step  # tensor_split: the first share is the longer
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y), step


def test_samples_per_second_leave_out_the_epochs_first_step() -> None:
    """A resume's first batch (or a compile) took seconds once; it is not the epoch's speed."""
    import time

    t, slow_s = trainer("epochs=1"), 1.5
    forward, calls = t.forward, []

    def slow_first(x: torch.Tensor) -> torch.Tensor:
        calls.append(None)
        if len(calls) == 1:
            time.sleep(slow_s)
        return forward(x)

    t.forward = slow_first  # type: ignore[method-assign]
    started = time.perf_counter()
    assert t.fit(Listener())
    total_s = time.perf_counter() - started  # the sleep, the steps, the evaluation
    timed = len(t.train) - 64  # all but the first global batch (batch_size 64)
    # Counting the first step would give at most len(train) / total_s.
    assert t.state.history[0]["samples_per_s"] > 0.95 * timed / (total_s - slow_s)


def test_a_run_that_diverges_on_its_last_step_names_that_steps_epoch() -> None:
    from runner.errors import Diverged

    t = trainer("epochs=1")
    assert t.fit(Listener())
    with torch.no_grad():
        next(t.state.model.parameters()).fill_(float("nan"))
    with pytest.raises(Diverged, match=rf"the weights are not finite at step {t.batches} \(epoch 1\)"):
        t.state.check_finite()
