"""How each process of a torchrun launch ended, and the one exit code a node reports.

torchrun reports any worker failure as exit 1, and restarts the workers on any
failure, bad input included. runner's exit codes are a contract (errors.Exit; a
Kubernetes podFailurePolicy keys on them), so each `runner run` under a launcher
records its own exit code in a file in a local directory the launcher names
($RUNNER_OUTCOMES), one file per (restart, local rank). The launcher stops the
launch as soon as a worker records a code no restart can change (bad input, a
diverged run) and, once torchrun has ended, turns the newest attempt's codes into
the node's exit code (`exit_code`, pure).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

from runner.errors import FAIL_AT_ONCE, RETRY_FREE, Exit

ENV = "RUNNER_OUTCOMES"
STOPPED = (Exit.OK, *RETRY_FREE)  # how workers end when the launch is stopped

Outcomes = dict[int, dict[int, int]]  # restart -> local rank -> exit code


def record(code: int, env: Mapping[str, str] = os.environ) -> None:
    """Record this worker's exit code for its launcher (a no-op outside a runner launch)."""
    directory = env.get(ENV)
    if not directory:
        return
    name = f"{int(env.get('TORCHELASTIC_RESTART_COUNT', '0'))}-{int(env.get('LOCAL_RANK', '0'))}"
    with contextlib.suppress(OSError):  # the launcher is gone: nobody is left to tell
        (Path(directory) / name).write_text(str(int(code)))


def read(directory: str | Path) -> Outcomes:
    """The codes recorded in `directory` so far, by restart and local rank."""
    found: Outcomes = {}
    for path in Path(directory).iterdir():
        restart, _, local_rank = path.name.partition("-")
        with contextlib.suppress(ValueError, OSError):
            found.setdefault(int(restart), {})[int(local_rank)] = int(path.read_text())
    return found


def fatal(outcomes: Outcomes) -> int | None:
    """A code of the newest attempt that no restart can change (bad input first), else None."""
    newest = outcomes[max(outcomes)] if outcomes else {}
    return next((int(code) for code in FAIL_AT_ONCE if code in newest.values()), None)


def exit_code(torchrun_code: int, outcomes: Outcomes, procs: int, stopped: bool) -> int:
    """The node's exit code once torchrun has ended with `torchrun_code` (pure).

    `procs`: the workers torchrun starts on this node; `stopped`: whether the launcher
    was sent a stop signal (and passed it on). Decided on the newest attempt's codes:
    a code no restart can change wins; every worker done is 0; a stop that every worker honoured is 143; a
    node whose every worker lost a peer is 75, also when torchrun's agent then failed to
    re-form the group (its rendezvous timed out: the attempt it restarted recorded
    nothing); a stop before any worker started (torchrun's rendezvous) is 143 too: nothing
    had trained; anything else, such as a worker killed before it could record a code, or
    a group that never formed, is 1.
    """
    if torchrun_code == 0:
        return Exit.OK
    if (code := fatal(outcomes)) is not None:
        return code
    newest = outcomes[max(outcomes)] if outcomes else {}
    everyone = len(newest) == procs
    if everyone and all(c == Exit.OK for c in newest.values()):
        return Exit.OK  # they finished; torchrun was stopped (or failed) on its way out
    if stopped and not outcomes:
        return Exit.PREEMPTED
    if stopped:
        return Exit.PREEMPTED if everyone and all(c in STOPPED for c in newest.values()) else Exit.FAILED
    if everyone and all(c == Exit.PEER_LOST for c in newest.values()):
        return Exit.PEER_LOST
    return Exit.FAILED
