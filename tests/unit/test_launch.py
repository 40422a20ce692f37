"""The launcher's decisions, pure: torchrun's command line, and one exit code from the workers' own."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner import outcomes
from runner.backends.torchrun import Node, torchrun_command
from runner.errors import Exit


def test_one_node_is_a_standalone_launch_of_runner_run() -> None:
    command = torchrun_command(["run", "job.toml", "--quiet"], Node(1, 2), 30)
    assert command[1:3] == ["-m", "runner.backends.agent"]  # torchrun, less its stop chatter
    assert "--standalone" in command and "--nproc-per-node=2" in command and "--nnodes=1" in command
    assert command[-5:] == ["-m", "runner", "run", "job.toml", "--quiet"]


@pytest.mark.parametrize(("rank", "host"), [(0, "true"), (1, "false")])
def test_several_nodes_meet_at_node_0s_c10d_rendezvous(rank: int, host: str) -> None:
    command = torchrun_command(["run", "job.toml"], Node(2, 8, rank, "job-0.job-nodes:29400", "job"), 30)
    assert "--standalone" not in command
    assert {"--rdzv-backend=c10d", "--rdzv-endpoint=job-0.job-nodes:29400", "--rdzv-id=job"} <= set(command)
    conf = next(c for c in command if c.startswith("--rdzv-conf="))
    assert f"is_host={host}" in conf


def test_torchrun_waits_for_the_workers_emergency_save_as_long_as_the_spec_grants() -> None:
    """torchrun's own parser reads the command: its shutdown timeout (SIGTERM to SIGKILL of
    the workers) is the spec's grace period, not torchrun's 30 s (pytorch #119856)."""
    from torch.distributed.run import parse_args

    command = torchrun_command(["run", "job.toml"], Node(1, 2), 95)
    args = parse_args(command[3:])
    assert args.shutdown_timeout == 95 and args.nproc_per_node == "2" and args.training_script == "runner"


def test_a_node_outside_the_job_or_without_a_rendezvous_is_refused() -> None:
    with pytest.raises(ValueError, match="node rank 2"):
        Node(2, 1, 2, "h:1")
    with pytest.raises(ValueError, match="rendezvous endpoint"):
        Node(2, 1, 1)


OK, STOP, LOST = int(Exit.OK), int(Exit.PREEMPTED), int(Exit.PEER_LOST)


@pytest.mark.parametrize(
    ("torchrun", "recorded", "stopped", "expected"),
    [
        (0, {0: {0: OK, 1: OK}}, False, Exit.OK),
        # torchrun says 1 for all of these:
        (1, {0: {0: 2, 1: LOST}}, False, Exit.BAD_INPUT),  # rank 0 found bad input, rank 1 lost it
        (1, {0: {0: 3, 1: 3}}, False, Exit.DIVERGED),
        (1, {0: {0: STOP, 1: STOP}}, True, Exit.PREEMPTED),
        (1, {0: {0: STOP, 1: LOST}}, True, Exit.PREEMPTED),  # one stopped at once, the other lost it then
        (1, {0: {0: 1, 1: STOP}}, True, Exit.FAILED),  # the emergency save failed
        (1, {0: {0: STOP}}, True, Exit.FAILED),  # a worker killed before it could say
        (1, {0: {0: LOST, 1: LOST}}, False, Exit.PEER_LOST),  # the other node is gone
        (1, {0: {0: LOST, 1: LOST}, 1: {0: 1, 1: LOST}}, False, Exit.FAILED),  # the newest attempt decides
        (1, {}, False, Exit.FAILED),  # the group never formed
        (143, {}, True, Exit.PREEMPTED),
        (143, {0: {0: OK, 1: OK}}, True, Exit.OK),  # stopped once the run had finished  # stopped in torchrun's rendezvous: no worker had started
        (137, {0: {0: OK}}, False, Exit.FAILED),
    ],
)
def test_the_node_exit_code_keeps_runners_contract(
    torchrun: int, recorded: outcomes.Outcomes, stopped: bool, expected: int
) -> None:
    assert outcomes.exit_code(torchrun, recorded, 2, stopped) == expected


def test_workers_record_their_codes_by_restart_and_local_rank(tmp_path: Path) -> None:
    env = {outcomes.ENV: str(tmp_path), "TORCHELASTIC_RESTART_COUNT": "1", "LOCAL_RANK": "3"}
    outcomes.record(Exit.PEER_LOST, env)
    outcomes.record(Exit.OK, {})  # outside a runner launch: nothing, anywhere
    assert outcomes.read(tmp_path) == {1: {3: 75}}
    assert outcomes.fatal({0: {0: 2}, 1: {0: LOST}}) is None  # only the newest attempt counts
    assert outcomes.fatal({1: {0: LOST, 1: 2}}) == 2


def test_the_agent_drops_torchruns_chatter_about_what_runner_explains_and_says_when_it_waits(capsys) -> None:
    import logging

    from runner.backends.agent import StopChatter

    chatter = StopChatter(900)

    def shown(message: str, level: int = logging.WARNING) -> bool:
        return chatter.filter(logging.LogRecord("torch", level, "api.py", 1, message, None, None))

    assert not shown("Received 15 death signal, shutting down workers")
    assert not shown("Sending process 8848 closing signal SIGTERM")
    assert not shown("failed (exitcode: 75) local_rank: 0 (pid: 1) of binary: python", logging.ERROR)
    assert not shown("The node 'n' has failed to send a keep-alive heartbeat to the rendezvous 'r'")
    assert not shown("[default] Rendezvous'ing worker group", logging.INFO)
    assert shown("failed (exitcode: 1) local_rank: 0 (pid: 1) of binary: python", logging.ERROR)  # a crash
    assert shown("failed (exitcode: 143) local_rank: 0 (pid: 1) of binary: python", logging.ERROR) is False
    assert not shown("[default] Worker group FAILED. 3/3 attempts left; will restart worker group", logging.INFO)
    assert "restart 1 of 3); waiting up to 900 s for the job's nodes" in capsys.readouterr().err


def test_a_port_to_bind_later_is_free_and_never_one_a_connection_could_take_meanwhile() -> None:
    """torch's get_free_port (bind port 0, close) hands out a port of the ephemeral range,
    which any outgoing connection may get as its source port before worker rank 0 binds it
    (seen by hand in a network namespace whose range was one port: EADDRINUSE). The agent's
    port, and the tests' rendezvous port, come from below the range. Mutation: the agent
    keeping torch's get_free_port fails here."""
    import socket

    from torch.distributed.elastic.rendezvous import api as rendezvous

    from runner.backends import agent
    from runner.backends.ports import ephemeral_range, listen_port

    low, high = ephemeral_range()
    assert ephemeral_range("32768\t60999\n") == (32768, 60999) and ephemeral_range("junk") == (32768, 60999)
    for port in [listen_port(), agent.workers_store_port()]:
        assert port < low, (port, low, high)
        socket.create_server(("", port)).close()  # free, on every interface
    agent.install_port_choice()
    assert rendezvous.get_free_port is agent.workers_store_port  # what RendezvousStoreInfo.build calls
