"""torchrun as runner runs it: torch's own launcher, less what it prints about what runner explains.

`python -m runner.backends.agent ARGS` is `torchrun ARGS` (torch.distributed.run.main, the
elastic agent unchanged) with two differences in what it prints:
- a stop signal: torch logs "Received 15 death signal", "Sending process N closing signal"
  for each worker, then dies in a 20-line `SignalException` traceback, after the workers'
  own "stopped by SIGTERM ..." line. Here the workers' line stays the last one: the stop's
  chatter is dropped and the agent exits 128 + N, as a process ended by signal N does;
- a worker that ended with one of runner's explained exit codes (2 bad input, 3 diverged,
  75 peer lost, 143 stopped: each printed its own one-line reason) is not reported again
  as torch's "failed (exitcode: 75)" error and its ChildFailedError banner.
Any other failure is reported as torch reports it. The launcher (torchrun.launch) turns
the workers' recorded codes into the node's exit code (outcomes.py).
"""

from __future__ import annotations

import logging
import re
import sys

from torch.distributed import run as torchrun
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from runner.errors import Exit

EXPLAINED = frozenset({Exit.BAD_INPUT, Exit.DIVERGED, Exit.PEER_LOST, Exit.PREEMPTED})
LOGGERS = ("torch.distributed.elastic.agent.server.api", "torch.distributed.elastic.multiprocessing.api")
EXPLAINED_FAILURE = re.compile(rf"failed \(exitcode: ({'|'.join(str(int(c)) for c in EXPLAINED)})\)")


class StopChatter(logging.Filter):
    """Drops torch's lines about a stop signal (once one came) and about explained failures."""

    def __init__(self) -> None:
        super().__init__()
        self.stopping = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "death signal, shutting down workers" in message:
            self.stopping = True
            return False
        if self.stopping and "closing signal" in message:
            return False
        return not EXPLAINED_FAILURE.search(message)


def main(argv: list[str]) -> int:
    """Run torchrun with `argv` (its command-line arguments); returns its exit code."""
    chatter = StopChatter()
    for name in LOGGERS:
        logging.getLogger(name).addFilter(chatter)
    try:
        torchrun.main(argv)
    except SignalException as e:
        return 128 + int(e.sigval)
    except ChildFailedError as e:
        if not {failure.exitcode for failure in e.failures.values()} <= EXPLAINED:
            raise
        return Exit.FAILED  # the launcher reads what each worker recorded
    return Exit.OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
