"""Exit codes, the error types that end a command, and the one table between them.

The exit codes are a contract: users' scripts, the torchrun launcher (outcomes.py) and
Kubernetes' podFailurePolicy (backends/manifests.py) key on them, through the sets below.
"""

from enum import IntEnum


class Exit(IntEnum):
    OK = 0  # done
    FAILED = 1  # a failure: a crash, a store that stayed down, a newer attempt took over
    BAD_INPUT = 2  # the spec, an override, a CLI argument, a file: retrying cannot help
    DIVERGED = 3  # the loss or the weights stopped being finite: a retry would diverge the same way
    # 128 + SIGTERM, as a shell reports a process a SIGTERM ended: "stopped, checkpoint
    # saved; resubmit to resume". Kubernetes retries it without counting a failure.
    PREEMPTED = 143
    # sysexits' EX_TEMPFAIL: a distributed job lost a peer (a node, a worker) and this process
    # stopped; the group re-forms and resumes from the last checkpoint. Kubernetes retries it
    # without counting a failure, as it does a preemption.
    PEER_LOST = 75
    ABORTED = 130  # 128 + SIGINT: a second Ctrl-C, which does not wait for a checkpoint


# What a retry can and cannot change, defined once for the launcher and the manifests.
FAIL_AT_ONCE = (Exit.BAD_INPUT, Exit.DIVERGED)  # a retry or a restart would end the same way: stop the job
RETRY_FREE = (Exit.PEER_LOST, Exit.PREEMPTED)  # no failure (a checkpoint saved, the group re-forms): retry


class UserError(Exception):
    """Input the user can fix (exit 2): a spec, an override, a CLI argument, a missing file.

    The message is shown as one line, without a traceback, so it must say what is
    wrong and how to fix it.
    """


class RunFailed(Exception):
    """A failure we can explain in one line (exit 1): no traceback, the reason."""


class PeerLost(RunFailed):
    """A collective or the rendezvous failed because another process of the job is gone
    (exit 75): nothing is wrong with this process, and a restarted group resumes."""


class Diverged(Exception):
    """The training loss or the weights are no longer finite (exit 3). Nothing non-finite
    is saved: the newest checkpoint is the last finite state. Not a RunFailed: a handler of
    failures (exit 1) must not take it for one."""

    def __init__(self, step: int, epoch: int, what: str):
        super().__init__(f"{what} at step {step} (epoch {epoch + 1})")
        self.step, self.epoch = step, epoch


# The code and the first word of the one line the CLI ends with, for each error that ends a
# command (cli/app.py), most specific first. 0, 3 and 143 are the session's results.
ENDINGS: tuple[tuple[type[Exception], Exit, str], ...] = (
    (UserError, Exit.BAD_INPUT, "error"),
    (PeerLost, Exit.PEER_LOST, "stopped"),
    (Diverged, Exit.DIVERGED, "diverged"),
    (RunFailed, Exit.FAILED, "failed"),
)
