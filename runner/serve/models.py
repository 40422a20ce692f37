"""The model being served, and reloading it without downtime.

`Models.current` is what a new request uses: a loaded model and its own batcher. A reload
loads the new model first (off the event loop, while the old one keeps answering), then
swaps the reference in one assignment: a request that already took the old model
finishes on it, and its batcher finishes what it was given. A reload that fails (a bad
new run, an unreachable bucket) is logged and changes nothing. Reloads happen on SIGHUP
(forced), and when the watcher sees the resolved run's final weights change (a new
promotion, a retrained run in the same directory).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from runner.serve import source
from runner.serve.batcher import Batcher
from runner.use.predict import probabilities
from runner.use.trained import Trained

log = logging.getLogger("uvicorn.error")  # uvicorn configures it: one log, in its format


@dataclass(frozen=True)
class Batching:
    max_batch: int = 32  # images per forward pass
    wait_s: float = 0.002  # how long the first image of a batch waits for more
    max_queue: int = 512  # images waiting, past which requests get 503

    @property
    def on(self) -> bool:
        return self.max_batch > 1


@dataclass(frozen=True)
class Served:
    loaded: source.Loaded
    batcher: Batcher
    loaded_at: float  # Unix seconds


def infer(trained: Trained, device: str, pixels: torch.Tensor) -> torch.Tensor:
    """Probabilities (N, classes) on the CPU, of float pixels (N, C, H, W) 0..255 (inference mode)."""
    return probabilities(trained, pixels.to(device)).cpu()


class Models:
    def __init__(
        self,
        ref: str,
        device: str,
        batching: Batching,
        executor: Executor,
        load: Callable[[str, str], source.Loaded] = source.load,
    ):
        self.ref = ref
        self.device = device
        self.batching = batching
        self.executor = executor  # the inference thread, shared by old and new model
        self.current: Served | None = None
        self.reloads = 0
        self.last_error: str | None = None
        self._load = load
        self._lock = asyncio.Lock()

    async def reload(self, force: bool = True) -> bool:
        """Load the model `ref` names now and swap it in; unless `force`, only if its weights
        changed. True if swapped. Raises what loading raised (the old model stays)."""
        async with self._lock:  # one reload at a time: a SIGHUP during a watcher's reload waits
            if not force and self.current is not None:
                mark = await asyncio.to_thread(lambda: source.fingerprint(source.resolve(self.ref)))
                if mark == self.current.loaded.fingerprint:
                    return False
            loaded = await asyncio.to_thread(self._load, self.ref, self.device)
            b = self.batching
            batcher = Batcher(
                partial(infer, loaded.trained, self.device), self.executor, b.max_batch, b.wait_s, b.max_queue
            )
            if self.current is not None:
                self.reloads += 1
            self.current = Served(loaded, batcher, time.time())
            self.last_error = None
            log.info("serving %s (%s, step %s)", loaded.run, loaded.trained.source, loaded.info["step"])
            return True

    async def try_reload(self, force: bool) -> None:
        """A reload whose failure is logged, not raised: the old model goes on serving."""
        try:
            await self.reload(force)
        except Exception as e:  # noqa: BLE001 - whatever broke the new model, keep the old one
            self.last_error = str(e)
            log.error("reload of %s failed, still serving the previous model: %s", self.ref, e)

    async def watch(self, every_s: float) -> None:
        """Reload whenever the resolved run's final weights change; runs until cancelled."""
        while True:
            await asyncio.sleep(every_s)
            await self.try_reload(force=False)

    def describe(self) -> dict[str, Any]:
        """`GET /v1/model`: the model's own description, and how it is served."""
        assert self.current is not None
        served = self.current
        b = self.batching
        return {
            **served.loaded.info,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(served.loaded_at)),
            "reloads": self.reloads,
            "last_reload_error": self.last_error,
            "batching": {"max_batch": b.max_batch, "wait_ms": b.wait_s * 1000, "max_queue": b.max_queue},
            "served": {"batches": served.batcher.batches, "images": served.batcher.images},
        }
