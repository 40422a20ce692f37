"""Concurrent requests as batches on the model's device: a short wait window, a maximum
batch, a bounded queue.

Each request hands in its images (N, C, H, W) and awaits their class probabilities. One
worker task per model collects what is waiting (up to `max_batch` images), runs one forward
pass on a thread of its own, off the event loop, and answers each request with its rows.
While a pass runs, the next batch gathers, so under load batches fill without any wait.
Before a pass the worker waits up to `wait_s` for more, but only while that can pay: while
requests are on their way (their body being read or decoded, announced with `coming`), or
when the last pass was shared by several requests (concurrent clients: more will come). A
lone client, one request after another, never pays the window. A request is never split;
one larger than `max_batch` runs alone. Past `max_queue` waiting images, `submit`
refuses at once (`Overloaded`: the app answers 503 with Retry-After) instead of growing.

The worker runs only while there is work and starts again on the next submit, so a
batcher needs no closing: after a reload the old one finishes what it was given (the
requests in flight answer from the old model) and is then simply dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field

import torch


class Overloaded(Exception):
    """The queue is full: try again shortly."""


@dataclass
class _Request:
    pixels: torch.Tensor
    future: asyncio.Future[torch.Tensor] = field(repr=False)


class Batcher:
    def __init__(
        self,
        infer: Callable[[torch.Tensor], torch.Tensor],
        executor: Executor,
        max_batch: int = 32,
        wait_s: float = 0.002,
        max_queue: int = 512,
    ):
        """`infer`: pixels (N, C, H, W) -> probabilities (N, classes), blocking, run on `executor`
        (one thread: one pass at a time on the device). `max_batch` 1 with `wait_s` 0 turns
        batching off: each request its own pass."""
        self.infer = infer
        self.executor = executor
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.max_queue = max_queue
        self.waiting = 0  # images queued, not yet in a pass
        self.arriving = 0  # requests on their way: admitted, not yet submitted
        self.batches = 0  # passes run, and images through them: for /v1/model's stats
        self.images = 0
        self._queue: deque[_Request] = deque()
        self._shared = False  # whether the last pass held more than one request
        self._news = asyncio.Event()  # a submit, or a request no longer on its way
        self._worker: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def coming(self) -> Iterator[None]:
        """Around what a request does before `submit` (reading, decoding): while any request is
        inside, a batch waits for it (up to `wait_s`). Leave it right before submitting."""
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1
            self._news.set()

    async def submit(self, pixels: torch.Tensor) -> torch.Tensor:
        """The probabilities (N, classes) of `pixels` (N, C, H, W); Overloaded if the queue is full."""
        n = len(pixels)
        if self.waiting and self.waiting + n > self.max_queue:
            raise Overloaded(f"{self.waiting} images already waiting (at most {self.max_queue})")
        request = _Request(pixels, asyncio.get_running_loop().create_future())
        self._queue.append(request)
        self.waiting += n
        self._news.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run())
        return await request.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            await self._window(loop.time() + self.wait_s)
            batch = self._take()
            self._shared = len(batch) > 1
            try:
                result = await loop.run_in_executor(self.executor, self.infer, torch.cat([r.pixels for r in batch]))
            except Exception as e:  # answer every request of the pass; the worker goes on
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(e)
                continue
            self.batches += 1
            self.images += len(result)
            start = 0
            for r in batch:
                rows = result[start : start + len(r.pixels)]
                start += len(r.pixels)
                if not r.future.done():  # its client may have gone
                    r.future.set_result(rows)

    async def _window(self, deadline: float) -> None:
        """Wait for more requests until `deadline` (loop time), the batch is full, or none is
        to be expected (nothing on its way, and the last pass was not shared)."""
        loop = asyncio.get_running_loop()
        while self.waiting < self.max_batch and (self.arriving or self._shared) and loop.time() < deadline:
            self._news.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._news.wait(), deadline - loop.time())

    def _take(self) -> list[_Request]:
        """The next batch: the oldest request, then the following ones while they fit."""
        batch = [self._queue.popleft()]
        size = len(batch[0].pixels)
        while self._queue and size + len(self._queue[0].pixels) <= self.max_batch:
            size += len(self._queue[0].pixels)
            batch.append(self._queue.popleft())
        self.waiting -= size
        return batch
