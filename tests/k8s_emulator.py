"""A Kubernetes API on loopback for the tests: kmock's KubernetesEmulator on a free port,
on its own asyncio loop in a thread, so the synchronous official client (and the real
`runner` command, through a kubeconfig) talk to it over HTTP.

kmock's own pytest plugin needs pytest-asyncio; pyproject.toml turns it off (-p no:kmock).
The emulator runs no controllers: tests set Job status and plant pods themselves.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import kmock
import kubernetes.client
import pytest

T = TypeVar("T")


class LabelSelectingEmulator(kmock.KubernetesEmulator):
    """
    KubernetesEmulator + server-side ``labelSelector`` / ``fieldSelector`` for LIST.

    Stock kmock 0.8 ``_serve_list`` ignores all query params and returns every
    object of the resource (in the namespace). Only simple equality-based
    selectors are implemented: ``a=b``, ``a==b``, ``a!=b``, ``a`` (exists),
    ``!a`` (not exists), comma-separated (AND); for fields: ``metadata.name=x``,
    ``metadata.namespace=x``.
    """

    async def _serve_list(self, request: kmock.Request) -> Any:
        result = await super()._serve_list(request)
        label_sel = request.params.get("labelSelector")
        field_sel = request.params.get("fieldSelector")
        items = result["items"]
        if label_sel:
            items = [o for o in items if _match_labels(label_sel, (o.get("metadata") or {}).get("labels") or {})]
        if field_sel:
            items = [o for o in items if _match_fields(field_sel, o)]
        return dict(result, items=items)


def _match_labels(selector: str, labels: dict[str, str]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = (s.strip() for s in term.split("!=", 1))
            if labels.get(k) == v:
                return False
        elif "==" in term or "=" in term:
            k, v = (s.strip() for s in term.replace("==", "=").split("=", 1))
            if labels.get(k) != v:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def _match_fields(selector: str, obj: dict[str, Any]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        neg = "!=" in term
        path, value = term.replace("!=", "=").replace("==", "=").split("=", 1)
        cur: Any = obj
        for part in path.strip().split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if (str(cur) == value.strip()) == neg:
            return False
    return True


class K8sEmulatorHandle:
    """What the fixture yields: the live emulator + helpers for the sync world."""

    def __init__(self, emulator: LabelSelectingEmulator, server: kmock.Server, loop: asyncio.AbstractEventLoop) -> None:
        self.kmock = emulator  # the DSL root: kmock[...] << payload, .objects, .requests
        self.server = server
        self.loop = loop
        self.url = str(server.url).rstrip("/")  # e.g. http://127.0.0.1:54321

    def configuration(self) -> kubernetes.client.Configuration:
        cfg = kubernetes.client.Configuration()
        cfg.host = self.url
        cfg.verify_ssl = False
        cfg.retries = False  # no urllib3 retries: fail fast in tests
        return cfg

    def api_client(self) -> kubernetes.client.ApiClient:
        return kubernetes.client.ApiClient(self.configuration())

    def call(self, fn: Callable[[], T], timeout: float = 5) -> T:
        """Run a sync callable inside the emulator's loop thread (thread-safe DSL/stream feeding)."""

        async def _run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(_run(), self.loop).result(timeout)


@pytest.fixture()
def k8s_emulator() -> Iterator[K8sEmulatorHandle]:
    loop = asyncio.new_event_loop()
    ready: concurrent.futures.Future[K8sEmulatorHandle] = concurrent.futures.Future()
    stop: asyncio.Event | None = None

    async def serve() -> None:
        nonlocal stop
        stop = asyncio.Event()
        try:
            # Constructed inside the loop: asyncio primitives bind to this loop.
            async with (
                LabelSelectingEmulator() as emulator,
                kmock.Server(emulator, host="127.0.0.1") as server,
            ):  # port=None -> free port
                # A real API server knows these before any object exists (an empty list, not a 404).
                for resource in ("v1/pods", "v1/configmaps", "v1/services", "batch/v1/jobs", "batch/v1/cronjobs"):
                    emulator.resources[resource] = {}
                ready.set_result(K8sEmulatorHandle(emulator, server, loop))
                await stop.wait()
        except BaseException as e:
            if not ready.done():
                ready.set_exception(e)
            raise

    def thread_main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(serve())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    thread = threading.Thread(target=thread_main, name="kmock-k8s-emulator", daemon=True)
    thread.start()
    handle = ready.result(timeout=10)
    try:
        yield handle
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)
        assert not thread.is_alive(), "kmock emulator thread did not stop"
