"""`runner serve`: the app under uvicorn, with the model loaded in the background, reloads
on SIGHUP and on change, and a drain on SIGTERM.

The server listens at once: /healthz answers while the model loads, /readyz once it is
loaded. A first load that fails ends the process with exit code 2 (bad RUN) or 1. On
SIGTERM or SIGINT uvicorn stops accepting connections, lets the requests in flight finish
for up to `grace_s`; then a SIGTERM ends the process with 143, also as a container's PID 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fastapi import FastAPI

from runner.errors import Exit, UserError
from runner.serve import guard
from runner.serve.app import create_app
from runner.serve.guard import Guard
from runner.serve.inputs import Limits
from runner.serve.models import Batching, Models, log


@dataclass(frozen=True)
class Options:
    host: str = "127.0.0.1"
    port: int = 8080
    device: str = "auto"
    threads: int = 0  # torch's CPU threads; 0: the cores this process may use
    batching: Batching = field(default_factory=Batching)
    limits: Limits = field(default_factory=Limits)
    watch_s: float = 10.0  # how often to look for new weights; 0: only on SIGHUP
    grace_s: float = 25.0  # SIGTERM: how long requests in flight may take to finish
    guard: Guard = field(default_factory=Guard)  # deadlines for slow clients, caps on connections and requests


def serve(ref: str, options: Options, note: Callable[[str], None]) -> int:
    """Serve the model `ref` names until a signal stops the server; the exit code when it
    stops by itself (a first load that failed). `note` hears which run a `PREFIX/promoted` is."""
    import uvicorn

    from runner import device as devices
    from runner.serve import source

    source.resolve(ref, note)  # a RUN that is not there: exit 2 now, before listening
    placement = devices.select(options.device, "fp32", options.threads)
    executor = ThreadPoolExecutor(1, thread_name_prefix="runner-infer")  # one pass at a time per device
    models = Models(ref, placement.device, options.batching, executor)
    outcome: dict[str, int] = {}
    server: uvicorn.Server

    def fail(code: int, message: str) -> None:
        log.error("%s", message)
        outcome["code"] = code
        server.should_exit = True

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        tasks = [asyncio.create_task(first_load(models, options.watch_s, fail))]
        reloads: set[asyncio.Task[None]] = set()

        def on_sighup() -> None:
            task = asyncio.create_task(models.try_reload(force=True))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_sighup)
        try:
            yield
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
            for task in tasks:
                task.cancel()

    decode_slots = max(1, min(4, devices.cpu_budget()))
    app = create_app(models, options.limits, decode_slots, lifespan)
    # Slow clients (uvicorn #1192): uvicorn has no deadline for receiving a request, and its
    # limit_concurrency counts connections, so it stays off; guard.py adds the deadlines and
    # caps, the probes exempt. The in-flight cap bounds the bodies held in memory.
    connections = guard.Connections(options.guard)
    config = uvicorn.Config(
        guard.Admission(app, options.guard, connections),
        host=options.host,
        port=options.port,
        http=guard.protocol(connections),  # h11 with deadlines, whether or not httptools is installed
        ws="none",  # no websockets: a connection never leaves the guarded protocol
        timeout_keep_alive=options.guard.keep_alive_s,
        timeout_graceful_shutdown=int(options.grace_s),
        log_level="info",
        access_log=False,  # one line per request would cost more than a small model's forward pass
    )
    server = uvicorn.Server(config)
    # uvicorn, having drained, restores the handler it found and raises the signal again. The
    # default handler would end the process by it, except as a container's PID 1, where the
    # kernel ignores it and the server exited 0: this one makes it 143 in both. (A SIGTERM
    # before uvicorn has its own handlers in place still stops the server.)
    stopped: list[int] = []

    def on_sigterm(signum: int, frame: object) -> None:
        stopped.append(signum)
        server.should_exit = True

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    executor.shutdown(wait=True)
    return int(Exit.PREEMPTED) if stopped else outcome.get("code", int(Exit.OK))


async def first_load(models: Models, watch_s: float, fail: Callable[[int, str], None]) -> None:
    """Load the model, then watch for new weights every `watch_s` seconds (0: never)."""
    try:
        await models.reload(force=True)
    except UserError as e:
        fail(int(Exit.BAD_INPUT), f"error: {e}")
        return
    except Exception as e:  # noqa: BLE001 - a crash loading: say it and stop with 1
        fail(int(Exit.FAILED), f"failed: loading {models.ref}: {e!r}")
        return
    if watch_s > 0:
        await models.watch(watch_s)
