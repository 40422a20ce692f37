"""Distributed launches: torchrun starts the processes of one node, runner keeps the exit codes.

A job of `resources.nodes` nodes x `procs` processes runs `runner launch` once per node
(a pod of an Indexed Job, or a machine); it runs torch's own launcher, torchrun, which
starts `runner run` once per process and re-forms the group when a process or a node
is lost (its elastic agent: --max-restarts, a c10d rendezvous at node 0). What runner
adds is the exit-code contract torchrun does not keep (see outcomes.py): bad input
stops the launch at once and exits 2, a stop signal that every process honoured exits
143, a node whose peers were lost exits 75, and Kubernetes retries the last two free.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass

from runner import outcomes
from runner.backends.child import supervise
from runner.device import cpu_budget
from runner.errors import Exit
from runner.training.signals import stopped_while_starting

RDZV_PORT = 29400  # torchrun's default c10d port
# Restarts of the whole node's group that torchrun makes by itself (a worker died, a peer
# node was lost and its replacement joined). A new node joining does not count.
MAX_RESTARTS = 3
# How long a node waits for the others at a rendezvous: the pods of a job can start
# minutes apart while a GPU node pool scales up.
JOIN_TIMEOUT_S = 900
# How long a node waits for the rendezvous store (node 0) before it gives up; torchrun's
# elastic agent then fails, and this node's launcher exits 75 (the peer is gone).
STORE_TIMEOUT_S = 60
# A fresh key-value store for each round of the rendezvous (each restart of the group),
# hosted by the new rank 0, instead of torchrun's default of one store shared by every
# round: a restarted process would otherwise read the address its peer published in the
# previous round, and gloo/NCCL connect to a dead port and time out (pytorch #135712:
# seen here as every in-launch restart failing, "Gloo connectFullMesh failed").
FRESH_STORE_EACH_ROUND = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
# torch's C++ warnings carry native stack traces: a lost peer printed ~100 lines of them on
# every node, burying the one line that says what happened. Errors still print; a user's own
# setting wins.
QUIET_CPP = {"TORCH_CPP_LOG_LEVEL": os.environ.get("TORCH_CPP_LOG_LEVEL", "ERROR")}


PEER_LOST_LINE = (
    "launch: exit 75: a peer of this node is gone and the group could not re-form in this launch "
    "(the node hosting the rendezvous is lost, or restarts ran out); start the job's nodes again "
    "and it resumes from the newest checkpoint (a Kubernetes Job does, without counting a failure)"
)


@dataclass(frozen=True)
class Node:
    """This node's place in a launch."""

    nodes: int  # nodes in the job
    procs: int  # processes on each node
    rank: int = 0  # this node: 0 .. nodes - 1 (node 0 hosts the rendezvous)
    endpoint: str = ""  # the rendezvous, host:port of node 0; "" with one node: this machine
    run_id: str = "runner"  # names the rendezvous: the same on every node of one job

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.nodes:
            raise ValueError(f"node rank {self.rank} is not in 0..{self.nodes - 1}")
        if self.nodes > 1 and not self.endpoint:
            raise ValueError(f"{self.nodes} nodes need a rendezvous endpoint (host:port of node 0)")


def torchrun_command(run_args: list[str], node: Node, grace_s: int) -> list[str]:
    """The torchrun command line that runs `runner <run_args>` in `node.procs` processes (pure).

    torchrun is run as runner.backends.agent (torchrun, with what it prints on a stop left
    out). `grace_s`: the spec's resources.grace_seconds. On a stop signal torchrun SIGKILLs
    its workers after --shutdown-timeout (30 s unless told: pytorch #119856), whatever the
    pod's grace period; told the spec's, it waits as long as their emergency save may take.
    """
    command = [
        sys.executable, "-m", "runner.backends.agent",
        f"--nnodes={node.nodes}", f"--nproc-per-node={node.procs}",
        f"--max-restarts={MAX_RESTARTS}", "--monitor-interval=0.5", f"--shutdown-timeout={int(grace_s)}",
    ]  # fmt: skip
    if not node.endpoint:
        command.append("--standalone")  # one node: a rendezvous on a free local port
    else:
        host = str(node.rank == 0).lower()
        command += [
            "--rdzv-backend=c10d", f"--rdzv-endpoint={node.endpoint}", f"--rdzv-id={node.run_id}",
            f"--rdzv-conf=is_host={host},join_timeout={JOIN_TIMEOUT_S},read_timeout={STORE_TIMEOUT_S}",
        ]  # fmt: skip
    return [*command, "-m", "runner", *run_args]


def launch(run_args: list[str], node: Node, grace_s: int) -> int:
    """Run `runner <run_args>` on this node through torchrun, passing on stop signals.
    Returns the node's exit code (outcomes.exit_code)."""
    with tempfile.TemporaryDirectory(prefix="runner-outcomes-") as recorded:
        # Each process's share of the cores (torchrun would otherwise set 1 and say so in a banner).
        threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, cpu_budget() // node.procs))
        env = {**os.environ, outcomes.ENV: recorded, "OMP_NUM_THREADS": threads, **FRESH_STORE_EACH_ROUND, **QUIET_CPP}
        code, stopped, _ = supervise(
            torchrun_command(run_args, node, grace_s), env, check=lambda: outcomes.fatal(outcomes.read(recorded))
        )
        records = outcomes.read(recorded)
        code = outcomes.exit_code(code, records, node.procs, stopped is not None)
    if stopped is not None and not records:  # stopped before any worker ran: no one else says so
        print(stopped_while_starting(stopped), file=sys.stderr, flush=True)
    if code == Exit.PEER_LOST:  # the last line of torchrun's output would be its own traceback
        print(PEER_LOST_LINE, file=sys.stderr, flush=True)
    return code
