"""runner.serve.guard: the deadlines, which connection makes room, the in-flight cap and its
probes, the summary line; and the protocol itself over a fake transport (no sockets)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

pytest.importorskip("uvicorn")

from runner.serve.guard import (  # noqa: E402
    Admission,
    Connections,
    Guard,
    Phase,
    Tally,
    admits,
    content_length,
    deadline,
    evictee,
    protocol,
)


def test_a_head_has_10_s_and_a_body_10_s_plus_1_s_per_16_kib() -> None:
    g = Guard()
    assert deadline(g, Phase.HEAD, 100.0) == 110.0
    assert deadline(g, Phase.BODY, 100.0, length=64 * 1024) == 114.0
    # A chunked body: its deadline grows with what arrived, so a steady 16 KiB/s never expires.
    assert deadline(g, Phase.BODY, 100.0, length=None, received=0) == 110.0
    assert deadline(g, Phase.BODY, 100.0, length=None, received=160 * 1024) == 120.0
    assert deadline(g, Phase.IDLE, 100.0) is None  # uvicorn's keep-alive timer
    assert deadline(g, Phase.APP, 100.0) is None  # the app's own business


def test_room_is_made_by_closing_the_oldest_idle_then_slow_connection_never_one_being_answered() -> None:
    assert evictee([("a", Phase.HEAD, 1.0), ("b", Phase.IDLE, 5.0), ("c", Phase.IDLE, 3.0)]) == "c"
    assert evictee([("a", Phase.BODY, 1.0), ("b", Phase.HEAD, 5.0), ("c", Phase.HEAD, 3.0)]) == "c"
    assert evictee([("a", Phase.APP, 1.0), ("b", Phase.BODY, 5.0)]) == "b"
    assert evictee([("a", Phase.APP, 1.0), ("b", Phase.APP, 0.5)]) is None
    assert evictee([]) is None


def test_the_probes_are_never_refused() -> None:
    g = Guard(max_in_flight=2)
    assert admits(g, "/v1/predict", 1) and not admits(g, "/v1/predict", 2)
    assert admits(g, "/healthz", 10_000) and admits(g, "/readyz", 10_000)


def test_content_length() -> None:
    assert content_length([(b"host", b"x"), (b"content-length", b"1000")]) == 1000
    assert content_length([(b"content-length", b"-1")]) is None
    assert content_length([(b"transfer-encoding", b"chunked")]) is None


def test_a_burst_is_one_line_after_a_second_then_at_most_one_every_report_s() -> None:
    now = [0.0]
    tally = Tally(Guard(report_s=10), clock=lambda: now[0])
    assert tally.add("head") == 1.0  # the first: say it in a second, with whatever follows
    assert tally.add("head") is None and tally.add("body") is None
    now[0] = 1.0
    line = tally.take()
    assert "1 sent no complete body in time (408); 2 sent no complete request head in time (408)" in line
    assert "head 10 s, body 10 s + 1 s per 16 KiB" in line and "1,024 connections" in line
    now[0] = 2.0
    assert tally.add("busy") == 9.0  # ten seconds after the last line
    now[0] = 11.0
    assert tally.take().startswith("slow or surplus clients: 1 refused with 503")


def run_asgi(app: Any, path: str) -> tuple[list[dict[str, Any]], asyncio.Task[None]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    return sent, asyncio.ensure_future(app({"type": "http", "path": path}, receive, send))


def test_past_the_in_flight_cap_a_request_gets_503_with_retry_after_and_a_probe_goes_in() -> None:
    async def main() -> None:
        release = asyncio.Event()
        entered: list[str] = []

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            entered.append(scope["path"])
            if scope["path"] == "/v1/predict":
                await release.wait()

        admission = Admission(app, Guard(max_in_flight=1))
        _, first = run_asgi(admission, "/v1/predict")
        await asyncio.sleep(0)
        refused, second = run_asgi(admission, "/v1/predict")
        _, probe = run_asgi(admission, "/healthz")
        await asyncio.gather(second, probe)
        assert refused[0]["status"] == 503 and (b"retry-after", b"1") in refused[0]["headers"]
        assert json.loads(refused[1]["body"])["error"].startswith("busy: 1 requests in flight")
        assert entered == ["/v1/predict", "/healthz"] and admission.in_flight == 1
        release.set()
        await first
        assert admission.in_flight == 0

    asyncio.run(main())


class Transport(asyncio.Transport):
    """Enough of a socket's transport for uvicorn's protocol: what it wrote, whether it closed."""

    def __init__(self, proto: asyncio.Protocol, loop: asyncio.AbstractEventLoop):
        super().__init__()
        self.proto, self.loop, self.written, self.closing = proto, loop, b"", False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written += data

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.loop.call_soon(self.proto.connection_lost, None)

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def connect(cls: type, config: Any, state: Any, loop: asyncio.AbstractEventLoop) -> tuple[Any, Transport]:
    proto = cls(config=config, server_state=state, app_state={}, _loop=loop)
    transport = Transport(proto, loop)
    proto.connection_made(transport)
    return proto, transport


def serve(guard: Guard, body: list[bytes] | None = None) -> tuple[type, Any, Any]:
    import uvicorn
    from uvicorn.server import ServerState

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (message := await receive())["type"] == "http.request" and message["more_body"]:
            pass
        if message["type"] == "http.disconnect":
            if body is not None:
                body.append(b"disconnect")
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    connections = Connections(guard)
    config = uvicorn.Config(app, http=protocol(connections), log_config=None, lifespan="off")
    config.load()
    return config.http_protocol_class, config, ServerState()


def test_a_slow_head_gets_408_a_slow_body_408_and_a_silent_connection_is_closed() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        seen: list[bytes] = []
        cls, config, state = serve(Guard(head_s=0.2, body_s=0.2), seen)
        slow_head, head_t = connect(cls, config, state, loop)
        slow_head.data_received(b"GET /healthz HTTP/1.1\r\nHo")
        slow_body, body_t = connect(cls, config, state, loop)
        slow_body.data_received(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
        silent, silent_t = connect(cls, config, state, loop)
        quick, quick_t = connect(cls, config, state, loop)
        quick.data_received(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.05)
        assert quick_t.written.startswith(b"HTTP/1.1 200 ") and not quick_t.closing  # kept alive
        assert quick.phase is Phase.IDLE and quick.timer is None  # uvicorn's keep-alive timer now
        await asyncio.sleep(0.4)
        assert head_t.closing and head_t.written.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert b"head did not arrive within 0.2 s" in head_t.written
        assert body_t.closing and body_t.written.startswith(b"HTTP/1.1 408 ") and seen == [b"disconnect"]
        assert silent_t.closing and silent_t.written == b""  # nothing asked, nothing answered
        assert not quick_t.closing and len(cls.guarded.open) == 1
        assert cls.guarded.tally.counts == {"head": 1, "body": 1, "silent": 1}
        quick_t.close()
        await asyncio.sleep(0)

    asyncio.run(main())


def test_a_connection_over_the_cap_closes_the_oldest_idle_one_not_itself() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        cls, config, state = serve(Guard(max_connections=2))
        slow, slow_t = connect(cls, config, state, loop)
        slow.data_received(b"GET /healthz HTTP/1.1\r\nHo")
        idle, idle_t = connect(cls, config, state, loop)
        idle.data_received(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.01)
        assert idle.phase is Phase.IDLE
        new, new_t = connect(cls, config, state, loop)  # over the cap: the idle one goes, silently
        await asyncio.sleep(0)
        assert idle_t.closing and idle_t.written.endswith(b"0\r\n\r\n") and not slow_t.closing and not new_t.closing
        newer, newer_t = connect(cls, config, state, loop)  # then the oldest slow one, with a 408
        await asyncio.sleep(0)
        assert slow_t.closing and b"closed to make room" in slow_t.written and not new_t.closing
        assert list(cls.guarded.open) == [new, newer]
        for t in (new_t, newer_t):
            t.close()
        await asyncio.sleep(0)

    asyncio.run(main())


def test_request_timeout_sets_the_head_and_body_deadlines(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from runner.cli.main import app
    from runner.serve import server

    seen: list[Any] = []
    monkeypatch.setattr(server, "serve", lambda ref, options, note: seen.append(options) or 0)
    result = CliRunner().invoke(app, ["serve", str(tmp_path), "--request-timeout", "3"])
    assert result.exit_code == 0, result.output
    assert (seen[0].guard.head_s, seen[0].guard.body_s, seen[0].guard.max_in_flight) == (3.0, 3.0, 256)
    assert CliRunner().invoke(app, ["serve", str(tmp_path), "--request-timeout", "0"]).exit_code == 2
