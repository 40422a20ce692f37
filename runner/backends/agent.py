"""torchrun as runner runs it: torch's own launcher, less what it prints about what runner explains.

`python -m runner.backends.agent ARGS` is `torchrun ARGS` (torch.distributed.run.main, the
elastic agent unchanged) with these differences in what it prints:
- a stop signal: torch logs "Received 15 death signal", "Sending process N closing signal"
  for each worker, then dies in a 20-line `SignalException` traceback, after the workers'
  own "stopped by SIGTERM ..." line. Here the workers' line stays the last one: the stop's
  chatter is dropped and the agent exits 128 + N, as a process ended by signal N does;
- a worker that ended with one of runner's explained exit codes (2 bad input, 3 diverged,
  75 peer lost, 143 stopped: each printed its own one-line reason) is not reported again
  as torch's "failed (exitcode: 75)" error and its ChildFailedError banner;
- a lost peer: the rendezvous' warnings about heartbeats and shutdown to a store that is
  gone, and the store's own traceback, become one line; a restart of the group says that
  this node waits for the job's nodes, and for how long (torch says so only at INFO level:
  node 0 looked hung while it waited for a lost node's replacement).
(The launcher also sets TORCH_CPP_LOG_LEVEL=ERROR: a lost peer made torch's C++ store print
its warnings with 20-frame native stack traces, about 100 lines a node.)
One difference in what it does: the port each round of the group publishes for its
workers' store (MASTER_PORT) is chosen below the kernel's ephemeral range (ports.py), not
by torch's bind-to-port-0: an outgoing connection made before worker rank 0 bound it could
take it, and worker rank 0 failed to bind it (EADDRINUSE): the group aborted and restarted.
Any other failure is reported as torch reports it. The launcher (torchrun.launch) turns
the workers' recorded codes into the node's exit code (outcomes.py).
"""

from __future__ import annotations

import logging
import re
import sys

import torch.distributed as dist
from torch.distributed import run as torchrun
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.elastic.rendezvous import api as rendezvous
from torch.distributed.elastic.rendezvous.api import RendezvousError

from runner.backends.ports import listen_port
from runner.errors import Exit

EXPLAINED = frozenset({Exit.BAD_INPUT, Exit.DIVERGED, Exit.PEER_LOST, Exit.PREEMPTED})
AGENT = "torch.distributed.elastic.agent.server.api"
LOGGERS = (AGENT, "torch.distributed.elastic.multiprocessing.api", "torch.distributed.elastic.rendezvous.dynamic_rendezvous")
EXPLAINED_FAILURE = re.compile(rf"failed \(exitcode: ({'|'.join(str(int(c)) for c in EXPLAINED)})\)")
# What the rendezvous warns once a peer (or the store's host) is gone: said by the workers' lines.
PEER_GONE_CHATTER = ("keep-alive heartbeat", "failed to shutdown the rendezvous", "closing signal")
RESTART = re.compile(r"Worker group (\w+)\. (\d+)/(\d+) attempts left; will restart worker group")


class StopChatter(logging.Filter):
    """Drops torch's lines about a stop signal (once one came) and about explained failures."""

    def __init__(self, join_timeout_s: int) -> None:
        super().__init__()
        self.join_timeout_s = join_timeout_s

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if restart := RESTART.search(message):
            print(
                f"launch: restarting this node's processes (restart {int(restart[3]) - int(restart[2]) + 1} of {restart[3]}); "
                f"waiting up to {self.join_timeout_s} s for the job's nodes to meet at the rendezvous",
                file=sys.stderr,
                flush=True,
            )
            return False
        if record.levelno < logging.WARNING:  # the agent's logger is at INFO for the line above
            return False
        if "death signal, shutting down workers" in message or any(c in message for c in PEER_GONE_CHATTER):
            return False
        return not EXPLAINED_FAILURE.search(message)


def workers_store_port() -> int:
    """The port for a round's workers' store (bound by worker rank 0 once it has started):
    one below the ephemeral range, or torch's own choice where there is none."""
    try:
        return listen_port()
    except OSError:
        return ORIGINAL_FREE_PORT()


ORIGINAL_FREE_PORT = rendezvous.get_free_port


def install_port_choice() -> None:
    """Make RendezvousStoreInfo.build (each round's MASTER_PORT, as the launcher gives every
    round a fresh store) choose with workers_store_port."""
    rendezvous.get_free_port = workers_store_port


def main(argv: list[str]) -> int:
    """Run torchrun with `argv` (its command-line arguments); returns its exit code."""
    timeout = re.search(r"join_timeout=(\d+)", " ".join(argv))
    chatter = StopChatter(int(timeout[1]) if timeout else 600)  # 600: torchrun's default
    for name in LOGGERS:
        logging.getLogger(name).addFilter(chatter)
    if logging.getLogger(AGENT).getEffectiveLevel() > logging.INFO:
        logging.getLogger(AGENT).setLevel(logging.INFO)
    install_port_choice()
    try:
        torchrun.main(argv)
    except SignalException as e:
        return 128 + int(e.sigval)
    except (RendezvousError, dist.DistError) as e:  # the rendezvous' store (node 0) is gone or unreachable
        cause = e.__cause__ or e
        first = (str(cause).strip().splitlines() or [""])[0][:160]
        print(f"launch: the rendezvous failed: {type(cause).__name__}: {first}", file=sys.stderr, flush=True)
        return Exit.FAILED
    except ChildFailedError as e:
        if not {failure.exitcode for failure in e.failures.values()} <= EXPLAINED:
            raise
        return Exit.FAILED  # the launcher reads what each worker recorded
    return Exit.OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
