"""The server's batcher and request parsing, without a server: concurrent requests share
forward passes up to the maximum batch, each gets its own rows, the queue is bounded,
a failed pass fails only its requests; bodies become items or a 4xx."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from runner.serve.batcher import Batcher, Overloaded
from runner.serve.inputs import BadInput, Limits, items_of


class Recorder:
    """An `infer` that returns each image's pixel sum, and records the batch sizes it saw."""

    def __init__(self, gate: threading.Event | None = None, fail_first: bool = False):
        self.sizes: list[int] = []
        self.gate = gate
        self.fail_first = fail_first

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            self.gate.wait(10)
        self.sizes.append(len(pixels))
        if self.fail_first and len(self.sizes) == 1:
            raise RuntimeError("device lost")
        return pixels.flatten(1).sum(1, keepdim=True)


def images(*values: float) -> torch.Tensor:
    return torch.tensor(values).view(-1, 1, 1, 1)


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


def test_concurrent_requests_share_passes_up_to_the_maximum_and_each_gets_its_rows() -> None:
    infer = Recorder()

    async def go() -> list[torch.Tensor]:
        batcher = Batcher(infer, ThreadPoolExecutor(1), max_batch=4, wait_s=0.05)
        return await asyncio.gather(*(batcher.submit(images(i, 100 + i)) for i in range(5)))

    answers = run(go())
    assert [a.flatten().tolist() for a in answers] == [[i, 100 + i] for i in range(5)]
    assert infer.sizes == [4, 4, 2]  # two requests of 2 per pass; never split


def test_the_window_waits_only_for_requests_on_their_way() -> None:
    infer = Recorder()

    async def client(batcher: Batcher, value: float, decode_s: float, fail: bool = False) -> torch.Tensor | None:
        """As the app does: read and decode inside `coming`, then submit."""
        try:
            with batcher.coming():
                await asyncio.sleep(decode_s)
                if fail:
                    raise ValueError("not an image")
                pixels = images(value)
        except ValueError:
            return None
        return await batcher.submit(pixels)

    async def go() -> list[float]:
        batcher = Batcher(infer, ThreadPoolExecutor(1), max_batch=8, wait_s=1.0)
        times = [time.monotonic()]
        assert (await client(batcher, 1, 0)).flatten().tolist() == [1]  # type: ignore[union-attr]
        times.append(time.monotonic())  # alone: no window
        c, d = await asyncio.gather(client(batcher, 4, 0), client(batcher, 5, 0.1, fail=True))
        assert c.flatten().tolist() == [4] and d is None  # type: ignore[union-attr]
        times.append(time.monotonic())  # waited for the one on its way, not past its failure
        a, b = await asyncio.gather(client(batcher, 2, 0), client(batcher, 3, 0.1))
        assert [a.flatten().tolist(), b.flatten().tolist()] == [[2], [3]]  # type: ignore[union-attr]
        times.append(time.monotonic())  # one pass, as soon as the second one arrived
        await client(batcher, 6, 0)
        times.append(time.monotonic())  # after a shared pass more are likely: the whole window
        await client(batcher, 7, 0)
        times.append(time.monotonic())  # after a pass of one, alone again: no window
        return [later - earlier for earlier, later in zip(times, times[1:], strict=False)]

    alone, failed, together, after_shared, alone_again = run(go())
    assert alone < 0.5 and 0.1 <= failed < 0.5 and 0.1 <= together < 0.5
    assert 0.9 <= after_shared < 1.5 and alone_again < 0.5
    assert infer.sizes == [1, 1, 2, 1, 1]


def test_batching_off_runs_each_request_alone_and_a_large_request_runs_whole() -> None:
    infer = Recorder()

    async def go() -> None:
        off = Batcher(infer, ThreadPoolExecutor(1), max_batch=1, wait_s=0)
        await asyncio.gather(*(off.submit(images(i)) for i in range(3)))
        assert (await off.submit(images(1, 2, 3))).flatten().tolist() == [1, 2, 3]

    run(go())
    assert infer.sizes == [1, 1, 1, 3]


def test_a_full_queue_refuses_at_once_and_the_rest_are_answered() -> None:
    gate = threading.Event()
    infer = Recorder(gate)

    async def go() -> tuple[list[torch.Tensor], int]:
        batcher = Batcher(infer, ThreadPoolExecutor(1), max_batch=2, wait_s=0, max_queue=4)
        first = asyncio.ensure_future(batcher.submit(images(0, 0)))  # in the pass the gate holds
        await asyncio.sleep(0.05)
        waiting = [asyncio.ensure_future(batcher.submit(images(i))) for i in range(4)]
        await asyncio.sleep(0)
        refused = 0
        for _ in range(3):
            with pytest.raises(Overloaded, match="4 images already waiting"):
                await batcher.submit(images(9))
            refused += 1
        gate.set()
        return await asyncio.gather(first, *waiting), refused

    answers, refused = run(go())
    assert refused == 3 and [a.flatten().tolist() for a in answers[1:]] == [[0], [1], [2], [3]]


def test_a_failed_pass_fails_its_requests_only() -> None:
    infer = Recorder(fail_first=True)

    async def go() -> None:
        batcher = Batcher(infer, ThreadPoolExecutor(1), max_batch=8, wait_s=0.02)
        results = await asyncio.gather(batcher.submit(images(1)), batcher.submit(images(2)), return_exceptions=True)
        assert [str(r) for r in results] == ["device lost", "device lost"]
        assert (await batcher.submit(images(3))).flatten().tolist() == [3]

    run(go())


@pytest.mark.parametrize(
    ("content_type", "body", "status", "message"),
    [
        ("image/png", b"", 400, "empty body"),
        ("text/plain", b"x", 415, "text/plain is not supported"),
        ("application/json", b"[1]", 422, 'one of "images"'),
        ("application/json", b'{"images": "abc"}', 422, "non-empty list"),
        ("application/json", b'{"images": [1]}', 422, "images[0]: expected a base64 string, got int"),
        ("application/json", b'{"images": ["@@"]}', 400, "images[0]: not base64"),
        ("application/json", b'{"pixels": [1, 2, 3]}', 413, "3 images in one request, more than 2"),
    ],
)
def test_bodies_refused(content_type: str, body: bytes, status: int, message: str) -> None:
    with pytest.raises(BadInput) as e:
        items_of(content_type, body, Limits(max_images=2))
    assert e.value.status == status and message in e.value.message


def test_bodies_accepted() -> None:
    (png,) = items_of("image/png; charset=binary", b"\x89PNG...", Limits())
    assert png.data == b"\x89PNG..." and png.name == "image"
    data_url, plain = items_of("application/json", b'{"images": ["data:image/png;base64,aGk=", "aGk="]}', Limits())
    assert data_url.data == plain.data == b"hi" and plain.name == "images[1]"
    (pixels,) = items_of("application/json", b'{"pixels": [[[0, 255]]]}', Limits())
    assert pixels.pixels == [[0, 255]] and pixels.data is None  # one array, of one row
