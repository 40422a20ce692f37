"""Deadlines and caps on connections, so that slow clients cannot deny service (uvicorn #1192).

uvicorn (0.55) has a keep-alive idle timeout but no deadline for receiving a request: its h11
protocol arms no timer from a connection's first byte (or from its opening, when it sends
nothing) to the end of the request head, nor while the body arrives. And `limit_concurrency`
counts open *connections*: a few hundred clients that send a byte every few seconds made
every request answer 503, liveness probes included, for as long as they stayed.

What this module adds, and where:

- `Protocol` (a subclass of uvicorn's H11Protocol, handed to uvicorn as `http=`, so the same
  code runs whether or not httptools is installed) keeps each connection in a phase and arms
  one timer per connection: the request head must arrive within `head_s` of the connection
  opening or of its first byte after a kept-alive response; the body within `body_s` plus
  1 s per `body_rate` bytes (of Content-Length, or of what arrived, for a chunked body).
  Late ones get 408 and are closed. Between requests uvicorn's own `timeout_keep_alive`
  closes idle connections: no code here for that.
- Open connections are capped (`max_connections`). The one over the cap does not get refused:
  the oldest idle connection is closed instead, else the oldest slow one (head, then body),
  so an attacker's old connections make room for new clients. Connections whose request the
  app is answering are never closed.
- `Admission` (an ASGI wrapper) caps the requests in the app (`max_in_flight`), answering
  503 with Retry-After past it, and never refuses the probes (/healthz, /readyz): a pod whose
  model is busy is alive, and must not be restarted for it. uvicorn's limit_concurrency is
  left off: it counts connections, the very bug.
- `Tally` sums what was closed and refused, and logs it at most once every `report_s`: a slow
  client is the client's doing, worth one warning line, not a line (or a traceback) each.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any, TypeVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("uvicorn.error")  # uvicorn configures it: one log, in its format

PROBES = frozenset({"/healthz", "/readyz"})


@dataclass(frozen=True)
class Guard:
    """The deadlines and caps. Defaults suit a model behind a cluster's probes: a client on
    a slow link sends a head (a few hundred bytes) in well under 10 s, and 16 KiB/s is a
    crawl for an image upload."""

    head_s: float = 10.0  # a request's head: from the connection (or its next request's first byte)
    body_s: float = 10.0  # a request's body: this, plus 1 s per `body_rate` bytes
    body_rate: int = 16 * 1024  # bytes per second past `body_s`
    keep_alive_s: int = 5  # idle between requests: uvicorn's timeout_keep_alive (whole seconds)
    max_connections: int = 1024  # open at once; the next one closes the oldest idle or slow one
    max_in_flight: int = 256  # requests in the app at once (probes aside); more get 503
    report_s: float = 10.0  # a summary of the connections closed and requests refused, at most this often


class Phase(enum.IntEnum):
    """Where a connection is; the order is which to close first to make room."""

    IDLE = 0  # between requests (uvicorn's keep-alive timer runs)
    HEAD = 1  # opened, or a request's head has begun to arrive
    BODY = 2  # a head received, its body arriving
    APP = 3  # the request received: the app answers it; no deadline here


# --- decisions: pure functions, tested alone -------------------------------------------


def deadline(guard: Guard, phase: Phase, since: float, length: int | None = None, received: int = 0) -> float | None:
    """When a connection in `phase` since `since` runs out of time; None: never (here).
    A body's deadline grows with its declared `length`, or for a chunked body (no length)
    with the bytes `received`: a steady 16 KiB/s upload of any size is never cut off."""
    if phase is Phase.HEAD:
        return since + guard.head_s
    if phase is Phase.BODY:
        return since + guard.body_s + (length if length is not None else received) / guard.body_rate
    return None


K = TypeVar("K")


def evictee(connections: Iterable[tuple[K, Phase, float]]) -> K | None:
    """Which of (key, phase, since) to close to make room: the oldest idle one, else the oldest
    with a head arriving, else with a body arriving. None where every one is in the app."""
    candidates = [(phase, since, i, key) for i, (key, phase, since) in enumerate(connections) if phase < Phase.APP]
    return min(candidates, key=lambda c: c[:3])[3] if candidates else None


def admits(guard: Guard, path: str, in_flight: int) -> bool:
    """Whether a request for `path` may enter the app with `in_flight` requests in it."""
    return path in PROBES or in_flight < guard.max_in_flight


def content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            return int(value) if value.strip().isdigit() else None
    return None


class Tally:
    """Counts of what happened, said in one line: `settle_s` after the first event (a burst
    in one line), then at most every `report_s`."""

    WHAT = {
        "head": "sent no complete request head in time (408)",
        "body": "sent no complete body in time (408)",
        "silent": "sent nothing in time (closed)",
        "evicted": "closed to make room for new ones (the open-connection cap was reached)",
        "busy": "refused with 503 (the in-flight cap was reached)",
    }

    def __init__(self, guard: Guard, clock: Callable[[], float] = time.monotonic, settle_s: float = 1.0):
        self.guard, self.clock, self.settle_s = guard, clock, settle_s
        self.counts: Counter[str] = Counter()
        self.last = -float("inf")
        self.scheduled = False

    def add(self, what: str) -> float | None:
        """Count `what`; in how many seconds to `take()` the line, where none is scheduled yet."""
        self.counts[what] += 1
        if self.scheduled:
            return None
        self.scheduled = True
        return max(self.settle_s, self.last + self.guard.report_s - self.clock())

    def take(self) -> str:
        """The line of what was counted since the last one."""
        g = self.guard
        self.scheduled, self.last = False, self.clock()
        parts = [f"{n:,} {self.WHAT[what]}" for what, n in sorted(self.counts.items())]
        self.counts = Counter()
        limits = f"head {g.head_s:g} s, body {g.body_s:g} s + 1 s per {g.body_rate // 1024} KiB"
        caps = f"{g.max_connections:,} connections, {g.max_in_flight:,} requests in flight"
        return f"slow or surplus clients: {'; '.join(parts)} (deadlines: {limits}; caps: {caps})"


# --- the protocol ----------------------------------------------------------------------


def timeout_response(message: str) -> bytes:
    """A 408 written straight to the socket, which is closed after it. Not through h11: a
    server's h11 refuses to answer a request whose head has not arrived."""
    body = json.dumps({"error": message}).encode()
    return (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )


class Connections:
    """The connections open now, shared by every `Protocol` of one server; the tally."""

    def __init__(self, guard: Guard):
        self.guard = guard
        self.open: dict[Protocol, None] = {}  # insertion order: oldest first
        self.tally = Tally(guard)

    def count(self, what: str, loop: asyncio.AbstractEventLoop) -> None:
        if (delay := self.tally.add(what)) is not None:
            loop.call_later(delay, lambda: log.warning("%s", self.tally.take()))

    def opened(self, conn: Protocol) -> None:
        self.open[conn] = None
        if len(self.open) > self.guard.max_connections:
            victim = evictee((c, c.phase, c.since) for c in self.open if c is not conn)
            if victim is not None:
                victim.expire("evicted")


def protocol(connections: Connections) -> type[H11Protocol]:
    """The uvicorn protocol class (`uvicorn.Config(http=...)`) whose connections are `connections`."""
    return type("GuardedH11Protocol", (Protocol,), {"guarded": connections})


class Protocol(H11Protocol):
    """uvicorn's h11 protocol with deadlines. It keeps uvicorn's parsing and ASGI cycle as they
    are, and looks at h11's state after each event uvicorn handles (data received, a response
    complete) to learn the connection's phase: their IDLE is a head to come, SEND_BODY a body
    arriving, DONE the app answering. One timer per connection, re-armed on a change."""

    guarded: Connections  # set by protocol(): one per server (uvicorn's `connections` is its own set)

    phase: Phase = Phase.HEAD
    since: float = 0.0
    received: int = 0  # bytes in this phase (a chunked body's deadline grows with them)
    length: int | None = None
    timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._enter(Phase.HEAD)  # one that connects and sends nothing gets the head's deadline too
        self.guarded.opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.guarded.open.pop(self, None)
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.phase is Phase.IDLE:  # a kept-alive connection's next request begins
            self._enter(Phase.HEAD)
        self.received += len(data)
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms uvicorn's keep-alive timer; may start a pipelined request
        self._follow()

    def _follow(self) -> None:
        """Move to the phase h11's state says, if it changed."""
        if self.transport.is_closing():
            return
        theirs = self.conn.their_state
        if theirs is h11.SEND_BODY:
            phase = Phase.BODY
        elif theirs is h11.IDLE:
            phase = Phase.HEAD if self.phase is Phase.HEAD or self.conn.trailing_data[0] else Phase.IDLE
        else:
            phase = Phase.APP if self.conn.our_state is not h11.DONE else self.phase
        if phase is not self.phase:
            if phase is Phase.BODY:
                self.length = content_length(self.headers or [])
            self._enter(phase, keep_received=phase is Phase.BODY)

    def _enter(self, phase: Phase, keep_received: bool = False) -> None:
        self.phase, self.since = phase, self.loop.time()
        if not keep_received:
            self.received = 0
        if phase is not Phase.BODY:
            self.length = None
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        when = deadline(self.guarded.guard, self.phase, self.since, self.length, self.received)
        if when is not None:
            self.timer = self.loop.call_at(when, self._expired)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self) -> None:
        self.timer = None
        if self.transport.is_closing():
            return
        if self.phase is Phase.BODY:
            # A chunked body's deadline has grown with what arrived meanwhile; and reading
            # paused by the server (the app has not taken the bytes yet) is no client's fault.
            now = self.loop.time()
            when = deadline(self.guarded.guard, self.phase, self.since, self.length, self.received) or now
            if self.flow.read_paused:
                when = max(when, now + 1)
            if when > now:
                self.timer = self.loop.call_at(when, self._expired)
                return
        if self.phase is Phase.HEAD:
            self.expire("head" if self.received else "silent")
        elif self.phase is Phase.BODY:
            self.expire("body")

    def expire(self, why: str) -> None:
        """Close this connection, with a 408 where a request had begun and none was answered."""
        self._disarm()
        self.guarded.open.pop(self, None)
        g = self.guarded.guard
        answered = self.cycle is not None and self.cycle.response_started and self.phase is not Phase.HEAD
        if self.phase is Phase.HEAD and self.received or self.phase is Phase.BODY and not answered:
            if why == "evicted":
                message = "closed to make room for other clients; send the request again"
            elif self.phase is Phase.HEAD:
                message = f"the request's head did not arrive within {g.head_s:g} s"
            else:
                allowed = f"{g.body_s:g} s + 1 s per {g.body_rate // 1024} KiB"
                message = f"the request's body did not arrive in time ({allowed})"
            self.transport.write(timeout_response(message))
        if self.phase is Phase.BODY and self.cycle is not None:
            # The app is waiting for the body: it hears a disconnect, and what it sends is dropped.
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        log.debug("%s: closed a connection in phase %s (%s)", self.client, self.phase.name, why)
        self.guarded.count(why, self.loop)
        self.transport.close()


# --- the in-flight cap -----------------------------------------------------------------

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Admission:
    """An ASGI app that lets at most `max_in_flight` requests into `app` (probes always)."""

    def __init__(self, app: ASGIApp, guard: Guard, connections: Connections | None = None):
        self.app, self.guard, self.connections = app, guard, connections
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBES:  # probes: never refused, not counted
            return await self.app(scope, receive, send)
        if not admits(self.guard, scope["path"], self.in_flight):
            if self.connections is not None:
                self.guarded.count("busy", asyncio.get_running_loop())
            body = json.dumps({"error": f"busy: {self.in_flight} requests in flight; retry shortly"}).encode()
            headers = [(b"content-type", b"application/json"), (b"retry-after", b"1")]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
