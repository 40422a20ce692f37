"""The training loop and the one object that holds all training state.

The data set lives in memory (on the GPU when training there) as uint8; each batch
is gathered by index and normalised on the device, so a step runs no per-sample
Python. Each epoch visits the samples in a permutation drawn from (seed, epoch),
so the loop's position is just (epoch, batch): resuming skips to it by index
instead of replaying a data loader.

In a distributed run every process walks the same global batches and takes its
share of each (`batch_size` is the global batch), so the data order does not depend
on the world size; the loss is scaled so that DDP's averaged gradient is the global
batch's mean gradient, and the metrics are sums over every process's share.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from runner.data.augment import augment
from runner.data.datasets import Dataset, Split
from runner.data.preprocessing import normalisation, normalise
from runner.device import Placement, check_compile
from runner.errors import Diverged
from runner.models.nets import batch_share
from runner.spec_tables import TrainSpec
from runner.training.distributed import Solo
from runner.training.events import Listener

EVAL_BATCH = 1024
AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def learning_rate(base: float, schedule: str, step: int, total_steps: int) -> float:
    """The rate for optimizer step `step` (0-based) of a run of `total_steps` steps (pure).

    constant: `base`. cosine: annealed from `base` to 0 over the run, per step, in closed
    form (SGDR, Loshchilov & Hutter 2017, eq. 5, with eta_min = 0 and no restarts). A
    function of (spec, step) alone: an interrupted run gets the very same rates, and an
    extended one (a larger `epochs`) the rates a fresh run of the new length has at each
    step. torch's CosineAnnealingLR computes each rate from the previous one, so changing
    its T_max after a resume cannot give that curve (pytorch #78003).
    """
    if schedule == "constant":
        return base
    progress = min(step, total_steps) / max(total_steps, 1)
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the `n` samples in `epoch`: a permutation (int64, (n,)), the same for a
    (seed, epoch) on any machine, whatever the process did before."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


def step_seed(seed: int, step: int) -> int:
    """The seed of torch's generators for step `step` (pure, 63 bits), on every process.

    Every random draw of a step (dropout) comes from it, so the draws are a function of
    (spec, step), never of what the process did before: a resumed run draws what an
    uninterrupted one drew, and no RNG state needs saving. runner's Dropout draws the
    mask of the whole global batch and keeps its process's rows (models/nets.py
    batch_share), so the masks do not depend on the world size either.
    """
    digest = hashlib.blake2b(f"{seed}/{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # torch.manual_seed takes up to 2**63 - 1 on every device


class Running:
    """Sums over the current epoch's steps, kept on the device so steps never sync."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.seen = 0

    def add(self, loss_sum: torch.Tensor, correct: torch.Tensor, n: int) -> None:
        """Add a step's summed loss and correct count over its `n` samples."""
        self.loss.add_(loss_sum.float())
        self.correct.add_(correct)
        self.seen += n

    def means(self) -> tuple[float, float]:
        """(mean loss, accuracy) so far; synchronises with the device."""
        if not self.seen:
            return math.nan, math.nan
        return self.loss.item() / self.seen, self.correct.item() / self.seen


class TrainState:
    """Model, optimizer, AMP scaler, position and metrics: all of it. (The learning rate and
    the random draws are functions of the position: see `learning_rate` and `step_seed`.)

    `state_dict()` holds only tensors and plain Python values, so it loads with
    `torch.load(weights_only=True)`. `batch` is the next batch of epoch `epoch`;
    `batch == batches per epoch` means the epoch is trained but not yet evaluated.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any):
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.epoch = self.batch = self.step = 0
        self.history: list[dict[str, Any]] = []  # one record per finished epoch
        self.running = Running(next(model.parameters()).device)

    def check_finite(self) -> None:
        """Raise Diverged unless the epoch's running loss and every weight are finite.

        One host sync: for a save, never per step. A non-finite step makes the running loss
        sum non-finite, so a loss that blew up anywhere in the epoch is caught here.
        """
        # The epoch of the last step: once an epoch is done (batch 0 of the next), the one before.
        epoch = self.epoch - 1 if self.batch == 0 and self.step > 0 else self.epoch
        if not torch.isfinite(self.running.loss):
            raise Diverged(self.step, epoch, "the training loss is not finite")
        if not torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all():
            raise Diverged(self.step, epoch, "the weights are not finite")

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "position": {"epoch": self.epoch, "batch": self.batch, "step": self.step},
            "running": {"loss": self.running.loss, "correct": self.running.correct, "seen": self.running.seen},
            "history": [dict(r) for r in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        # `precision` may change on resume. The scaler's state (its loss scale) means something
        # only to a run in fp16, so it carries over from fp16 to fp16; a run that enters fp16
        # starts a fresh scale (2**16, adapted within a few steps), and one that leaves it
        # drops the old scale. (A disabled scaler saves {}, which an enabled one refuses.)
        if self.scaler.is_enabled() and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        pos = state["position"]
        self.epoch, self.batch, self.step = pos["epoch"], pos["batch"], pos["step"]
        self.running.loss.copy_(state["running"]["loss"])
        self.running.correct.copy_(state["running"]["correct"])
        self.running.seen = state["running"]["seen"]
        self.history = [dict(r) for r in state["history"]]


class Trainer:
    """The loop: trains `model` on `data` as `cfg` says, on `placement`'s device, as one process
    of `group`, reporting to a `Listener`. Holds the splits on the device (uint8) and all
    training state in `state` (the same on every process of a group)."""

    def __init__(
        self, cfg: TrainSpec, model: nn.Module, data: Dataset, placement: Placement, augment: Sequence[str] = ()
    ):
        self.cfg, self.placement, self.info = cfg, placement, data.info
        self.fingerprint, self.notes = data.fingerprint, data.notes  # what the run records of its data
        self.augment = tuple(augment)  # [data] augment: applied to each training batch (data/augment.py)
        self.device = torch.device(placement.device)
        self.amp_dtype = AMP_DTYPES[placement.precision]
        self.memory_format = torch.channels_last if placement.channels_last else torch.contiguous_format
        model = model.to(self.device, memory_format=self.memory_format)
        if cfg.compile:
            check_compile(self.device.type)
        # Moved once: every step then gathers its batch on the device.
        self.train, self.val, self.test = (self._to_device(s) for s in (data.train, data.val, data.test))
        self.scale, self.shift = normalisation(data.info.mean, data.info.std, self.device)
        self.batches = math.ceil(len(self.train) / cfg.batch_size)
        optimizer = _optimizer(cfg, model.parameters(), self.device)
        # Loss scaling is needed for fp16 only; disabled, the scaler passes through.
        scaler = torch.amp.GradScaler(self.device.type, enabled=placement.precision == "fp16")
        self.state = TrainState(model, optimizer, scaler)
        self.join(Solo())

    def join(self, group: Solo) -> None:
        """Train as one process of `group` from now on (DDP broadcasts rank 0's weights to all)."""
        model, self.group = self.state.model, group
        # The compiled module (and DDP) share the model's parameters; the state stays the plain
        # model, so checkpoints and weights carry no wrapper and load anywhere.
        trained = group.wrap(model, self.device)
        self.forward = torch.compile(trained) if self.cfg.compile else trained
        # Evaluation runs on the plain model: DDP's forward is a collective (it broadcasts
        # buffers), and the processes evaluate different numbers of chunks.
        self.infer = self.forward if trained is model else torch.compile(model) if self.cfg.compile else model

    def _to_device(self, split: Split) -> Split:
        return Split(split.x.to(self.device), split.y.to(self.device))

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        return normalise(x, self.scale, self.shift).contiguous(memory_format=self.memory_format)

    def _autocast(self) -> AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return nullcontext()  # constructing a disabled autocast costs more than a small step's kernels
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def fit(self, events: Listener, stop: Callable[[], bool] = lambda: False) -> bool:
        """Train to `cfg.epochs`. Returns False if `stop()` said so between two steps (in a
        group, `stop` must be a collective decision: every process stops at the same step)."""
        s, bs, n = self.state, self.cfg.batch_size, len(self.train)
        rank, world = self.group.rank, self.group.world_size
        while s.epoch < self.cfg.epochs:
            order = epoch_order(n, self.cfg.seed, s.epoch).to(self.device)
            events.epoch_start(s.epoch, s.batch, self.batches)
            # Timed from the end of the epoch's first step: start-up (a resume's first batch, a
            # compile, the first allocations) would otherwise count against one batch.
            started: float | None = None
            samples = 0
            while s.batch < self.batches:
                if stop():
                    return False
                idx = order[s.batch * bs : (s.batch + 1) * bs]  # the global batch
                # This process's share: rows offset .. offset + len(mine) of the global batch
                # (tensor_split's sizes: the first len % world shares are one longer).
                mine = idx.tensor_split(world)[rank] if world > 1 else idx
                offset = rank * (len(idx) // world) + min(rank, len(idx) % world)
                # index_select copies whole rows; x[idx] (advanced indexing) is ~15x slower on a CPU.
                x = self.train.x.index_select(0, mine)
                if self.augment:  # draws for the whole global batch, this share's rows kept
                    x = augment(x, self.augment, self.cfg.seed, s.step, offset, len(idx))
                with batch_share(offset, len(idx)):
                    self._step(x, self.train.y.index_select(0, mine), len(idx))
                s.batch += 1
                s.step += 1
                if started is None:
                    started = self._synchronized_clock()
                else:
                    samples += len(idx)
                events.step(s.batch, s.running)
            train_loss, train_acc = s.running.means()  # synchronises: the timing is honest
            elapsed = time.perf_counter() - (started or 0.0)
            if not math.isfinite(train_loss):  # before this epoch's record and its checkpoint
                raise Diverged(s.step, s.epoch, f"the training loss is {train_loss}")
            # Preemption can come during evaluation too: stop there, and the resumed run
            # (batch == batches) evaluates this epoch again.
            if (val := self.evaluate(self.val, stop)) is None:
                return False
            val_loss, val_acc = val
            record = {
                "epoch": s.epoch + 1,
                "step": s.step,
                "train_loss": train_loss,
                "train_acc": train_acc,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "lr": self.lr(s.step - 1),  # the rate of the epoch's last step
                "samples_per_s": samples / elapsed if samples else None,
            }
            s.history.append(record)
            s.epoch, s.batch = s.epoch + 1, 0
            s.running = Running(self.device)
            events.epoch_end(record)
        return True

    def _synchronized_clock(self) -> float:
        """perf_counter() once the device has done what was queued (once an epoch: on a GPU
        a step returns before its kernels have run)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def lr(self, step: int) -> float:
        """The learning rate of step `step` in this run (see `learning_rate`)."""
        return learning_rate(self.cfg.lr, self.cfg.lr_schedule, step, self.cfg.epochs * self.batches)

    def _step(self, x: torch.Tensor, y: torch.Tensor, n: int) -> None:
        """One optimizer step on this process's share (`x`, `y`) of a global batch of `n` samples.

        Collectives (DDP's gradient all-reduce, the metrics' sums) all come before the state
        changes: a step that fails because a peer is gone leaves the state of the last step.
        """
        s, world = self.state, self.group.world_size
        torch.manual_seed(step_seed(self.cfg.seed, s.step))
        if self.cfg.lr_schedule != "constant":
            rate = self.lr(s.step)
            for group in s.optimizer.param_groups:
                group["lr"] = rate
        with self._autocast():
            logits = self.forward(self._inputs(x))
            loss_sum = F.cross_entropy(logits, y, reduction="sum")
        # DDP averages the processes' gradients (divides their sum by the world size): scaled
        # so, the result is the gradient of the global batch's mean loss, whatever the split.
        loss = loss_sum * (world / n)
        correct = (logits.argmax(1) == y).sum()
        s.optimizer.zero_grad(set_to_none=True)
        if s.scaler.is_enabled():  # fp16 only
            s.scaler.scale(loss).backward()
        else:
            loss.backward()
        if world > 1:  # the metrics of the whole global batch, on every process
            sums = torch.stack([loss_sum.detach().double(), correct.double()])
            self.group.sum_(sums)
            loss_sum, correct = sums[0], sums[1].long()
        if s.scaler.is_enabled():
            s.scaler.step(s.optimizer)
            s.scaler.update()
        else:
            s.optimizer.step()
        s.running.add(loss_sum.detach(), correct, n)

    @torch.no_grad()
    def evaluate(
        self, split: Split, stop: Callable[[], bool] = lambda: False
    ) -> tuple[float | None, float | None] | None:
        """(mean loss, accuracy) on a split, (None, None) for an empty one, None if stopped.

        The split is cut into chunks of EVAL_BATCH; in a group, process r evaluates chunks r,
        r + W, ... and the per-chunk sums are gathered (each has one non-zero contribution,
        so the sum is exact) and added up in chunk order: the numbers do not depend on W.
        """
        if not len(split):
            return None, None
        chunks, rank, world = math.ceil(len(split) / EVAL_BATCH), self.group.rank, self.group.world_size
        dtype = torch.float32 if self.device.type == "mps" else torch.float64  # MPS has no float64
        sums = torch.zeros((chunks, 2), dtype=dtype, device=self.device)  # (loss sum, correct) per chunk
        model = self.state.model
        model.eval()
        try:
            for first in range(0, chunks, world):  # every process asks stop() equally often
                if stop():
                    return None
                if (chunk := first + rank) < chunks:
                    x, y = (t[chunk * EVAL_BATCH : (chunk + 1) * EVAL_BATCH] for t in (split.x, split.y))
                    with self._autocast():
                        logits = self.infer(self._inputs(x))
                    sums[chunk, 0] = F.cross_entropy(logits.float(), y, reduction="sum")
                    sums[chunk, 1] = (logits.argmax(1) == y).sum()
        finally:
            model.train()
        self.group.sum_(sums)
        loss, correct = sums.sum(0).tolist()
        return loss / len(split), correct / len(split)

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a saved state (checkpoints from before the closed-form learning rate
        also hold a "scheduler" entry, which is not needed: the rate follows from the step)."""
        self.state.load_state_dict(state)


def _optimizer(cfg: TrainSpec, params: Any, device: torch.device) -> torch.optim.Optimizer:
    # Fused: one kernel per parameter instead of about ten, and deterministic. For a small
    # model on a CPU the unfused update was a fifth of the step time.
    fused = True if device.type in ("cpu", "cuda") else None
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
