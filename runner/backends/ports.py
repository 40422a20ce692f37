"""A port to listen on later, that no outgoing connection can take meanwhile.

A port found by binding port 0 and closing (torch's `get_free_port`, the usual test
helper) comes from the kernel's ephemeral range, the range every outgoing connection takes
its source port from; it is published, then bound seconds later (torchrun: the round's
MASTER_PORT, bound by worker rank 0 once its process has started). Any connection made
meanwhile (gloo's mesh, a store client, an upload) can get that very port, and the bind
fails: a worker aborts and the group restarts, or a rendezvous host cannot listen. A port
below the ephemeral range is never handed out as a source port.
"""

from __future__ import annotations

import random
import socket

EPHEMERAL = "/proc/sys/net/ipv4/ip_local_port_range"
LOWEST = 10_000  # the well-known and most commonly configured service ports lie below
# torch's defaults (torchrun's rendezvous, MASTER_PORT): free now, but a launch may want them next.
TORCH_DEFAULTS = frozenset({29400, 29500})
TRIES = 64


def ephemeral_range(text: str | None = None) -> tuple[int, int]:
    """The kernel's ephemeral port range (low, high), from `text` (the file's content) or
    EPHEMERAL; Linux's default (32768, 60999) where it cannot be read."""
    try:
        if text is None:
            with open(EPHEMERAL) as f:
                text = f.read()
        low, high = (int(p) for p in text.split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def listen_port(host: str = "", rng: random.Random | None = None) -> int:
    """A port free on `host` ("": every interface) now, outside the ephemeral range and not
    one of torch's defaults, to be bound later (by this process or another). Raises OSError
    if TRIES random ones were all taken, or the range leaves no room below it (then the
    caller's usual port-0 way is all there is)."""
    low, _ = ephemeral_range()
    if low <= LOWEST + TRIES:
        raise OSError(f"no ports below the ephemeral range ({low}-) to choose from")
    rng = rng or random.SystemRandom()
    for _ in range(TRIES):
        port = rng.randrange(LOWEST, low)
        if port in TORCH_DEFAULTS:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"{TRIES} ports between {LOWEST} and {low} were all taken")
