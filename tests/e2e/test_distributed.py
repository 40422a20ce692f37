"""Distributed training on a CPU: real torchrun launches of 2 gloo processes (and two torchrun
"nodes" on 127.0.0.1 with a c10d rendezvous), killed and stopped the ways clusters do it.

The reference is one uninterrupted 2-process run; every interrupted run must end with
final weights bitwise equal to it, whether a worker, a whole process tree or a whole
node was killed. One process and two record the same metrics and see the same samples.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import time
from pathlib import Path

import pytest
import torch

from runner.backends.ports import listen_port
from runner.rundir.layout import RunDir
from tests.helpers import JOBS, REPO, Job, descendants, kill_tree, read_weights, runner_cli, same_tensors

# The CNN with dropout and Adam: 41 global batches of 32 an epoch, a checkpoint every 3 steps.
SPEC = ["--set=device=cpu", "--set=epochs=2", "--set=batch_size=32", "--set=checkpoint.every_steps=3"]
TWO = "--set=resources.procs_per_node=2"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
DIGITS = str(JOBS / "digits.toml")
# Samples in each split of digits.toml's data set (1,797 digits): what one flipped prediction moves an accuracy by.
SAMPLES = {"train_acc": 1294, "val_acc": 180, "test_acc": 359}


def submit(run_dir: Path, *extra: str, cwd: Path) -> Job:
    return Job("submit", DIGITS, *SPEC, *extra, f"--set=checkpoint.dir={run_dir}", "--quiet", cwd=cwd, env=ENV)


def workers(pid: int) -> list[int]:
    """The `runner run` processes below `pid`."""
    found = []
    for child in descendants(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"runner" in cmdline and b"run" in cmdline and b"runner.backends.agent" not in cmdline:
            found.append(child)
    return found


def newest_step(run_dir: Path) -> int:
    entries = RunDir(str(run_dir)).checkpoint_index().refresh()
    return entries[0].step if entries else 0


def wait_for_a_checkpoint_after(step: int, run_dir: Path, job: Job, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while (newest := newest_step(run_dir)) <= step and job.proc.poll() is None:
        assert time.monotonic() < deadline, f"no checkpoint past step {step}:\n{job.out}"
        time.sleep(0.02)
    return newest


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One uninterrupted 2-process run: its final weights and metrics."""
    cwd = tmp_path_factory.mktemp("reference")
    job = submit(cwd / "run", TWO, cwd=cwd)
    assert job.finish() == 0, job.out
    return {"weights": read_weights(cwd / "run/final/model.safetensors"), "metrics": metrics(cwd / "run")}


def test_two_processes_are_deterministic_and_record_what_one_process_records(reference: dict, tmp_path: Path) -> None:
    again = submit(tmp_path / "again", TWO, cwd=tmp_path)
    assert again.finish() == 0, again.out
    assert same_tensors(read_weights(tmp_path / "again/final/model.safetensors"), reference["weights"])
    # TensorBoard's file comes from rank 0 alone, the one that claimed the run directory.
    assert [p.name for p in (tmp_path / "again/tensorboard").iterdir()] == ["events.out.tfevents.00000001.runner"]
    # One process and two take the same steps of the global batch: the same gradients and
    # metrics of the whole batch and validation set, not of rank 0's share (off by percents),
    # up to the order of floating-point sums. Plain SGD keeps those last bits where they are
    # (Adam's first steps, g / sqrt(v), blow them up to the whole rate: a flaky comparison).
    sgd = ["--set=epochs=1", "--set=optimizer=sgd", "--set=lr=0.05"]
    pair = submit(tmp_path / "pair", TWO, *sgd, cwd=tmp_path)
    assert pair.finish() == 0, pair.out
    solo = submit(tmp_path / "solo", "--set=resources.procs_per_node=1", "--set=threads=1", *sgd, cwd=tmp_path)
    assert solo.finish() == 0, solo.out
    ones, twos = read_weights(tmp_path / "solo/final/model.safetensors"), read_weights(tmp_path / "pair/final/model.safetensors")
    for name, weight in ones.items():
        assert torch.allclose(twos[name], weight, rtol=1e-4, atol=1e-6), name
    ones, twos = metrics(tmp_path / "solo"), metrics(tmp_path / "pair")
    assert [(r["epoch"], r["step"]) for r in ones] == [(r["epoch"], r["step"]) for r in twos] == [(1, 41), (1, 41)]
    for one, two in zip(ones, twos):
        for key, samples in SAMPLES.items():
            if key.endswith("_acc") and key in one:
                # A sample whose two top logits tie within rounding may flip: one sample at most.
                assert abs(one[key] - two[key]) * samples <= 1 + 1e-9, (key, one, two)
                assert two[key.replace("_acc", "_loss")] == pytest.approx(one[key.replace("_acc", "_loss")], rel=1e-5)

def test_sigkill_of_one_worker_at_random_moments_recovers_by_itself_bitwise(reference: dict, tmp_path: Path) -> None:
    """torchrun's elastic agent restarts the group from the newest checkpoint, in the same launch."""
    run_dir, rng, kills = tmp_path / "run", random.Random(13), 0
    job = submit(run_dir, TWO, cwd=tmp_path)
    while kills < 2:
        started, step = time.monotonic(), newest_step(run_dir)
        if wait_for_a_checkpoint_after(step, run_dir, job) >= 70 or job.proc.poll() is not None:
            break
        time.sleep(rng.uniform(0.0, 1.0) * (time.monotonic() - started))
        victims = workers(job.proc.pid)
        assert len(victims) == 2, job.out
        os.kill(rng.choice(victims), signal.SIGKILL)
        kills += 1
        job.wait_for(r"resumed from step", timeout=120) if kills == 1 else None
    assert job.finish() == 0, job.out
    assert kills == 2 and len(re.findall(r"resumed from step \d+", job.out)) >= 2, job.out
    assert same_tensors(read_weights(run_dir / "final/model.safetensors"), reference["weights"])


def test_sigkill_of_the_whole_process_tree_then_resubmit_ends_bitwise_equal(reference: dict, tmp_path: Path) -> None:
    run_dir, rng = tmp_path / "run", random.Random(7)
    job = submit(run_dir, TWO, cwd=tmp_path)
    started = time.monotonic()
    wait_for_a_checkpoint_after(6, run_dir, job)
    time.sleep(rng.uniform(0.0, 1.0) * (time.monotonic() - started) / 2)
    kill_tree(job.proc.pid)
    job.finish()
    again = submit(run_dir, TWO, cwd=tmp_path)
    assert again.finish() == 0, again.out
    assert re.search(r"resumed from step \d+", again.out), again.out
    assert same_tensors(read_weights(run_dir / "final/model.safetensors"), reference["weights"])


def test_sigterm_to_the_launcher_saves_once_exits_143_within_10_s_and_resumes_bitwise(
    reference: dict, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    job = submit(run_dir, TWO, cwd=tmp_path)
    wait_for_a_checkpoint_after(3, run_dir, job)
    sent = time.monotonic()
    job.proc.send_signal(signal.SIGTERM)  # what the kubelet sends the container's PID 1
    code = job.finish()
    took = time.monotonic() - sent
    assert code == 143 and took < 10, (code, took, job.out)
    stops = re.findall(r"stopped by SIGTERM at step (\d+): checkpoint \([\d.]+ MB\) saved", job.out)
    assert len(stops) == 1, job.out  # rank 0 alone saved, once
    assert newest_step(run_dir) == int(stops[0])
    again = submit(run_dir, TWO, cwd=tmp_path)
    assert again.finish() == 0, again.out
    assert f"resumed from step {stops[0]}" in again.out
    assert same_tensors(read_weights(run_dir / "final/model.safetensors"), reference["weights"])


def test_a_run_checkpointed_by_two_processes_completes_in_one(reference: dict, tmp_path: Path) -> None:
    """2 nodes became 1: the run resumes at the same global position and sees the same global
    order; its weights differ from the 2-process run's only by floating-point reduction order."""
    run_dir = tmp_path / "run"
    job = submit(run_dir, TWO, cwd=tmp_path)
    wait_for_a_checkpoint_after(45, run_dir, job)  # into the second epoch
    job.proc.send_signal(signal.SIGTERM)
    assert job.finish() == 143, job.out
    step = newest_step(run_dir)
    alone = submit(run_dir, "--set=resources.procs_per_node=1", "--set=threads=1", cwd=tmp_path)
    assert alone.finish() == 0, alone.out
    assert f"resumed from step {step}" in alone.out, alone.out
    assert [(r["epoch"], r["step"]) for r in metrics(run_dir)] == [
        (r["epoch"], r["step"]) for r in reference["metrics"]
    ]
    resumed, uninterrupted = metrics(run_dir), reference["metrics"]
    timing = "samples_per_s"  # the epoch both trained with two processes: the same but for its speed
    assert {**resumed[0], timing: 0} == {**uninterrupted[0], timing: 0}
    assert resumed[-1]["test_acc"] == pytest.approx(uninterrupted[-1]["test_acc"], abs=0.02), (resumed, uninterrupted)


def free_port() -> int:
    """The rendezvous' port: bound by node 0's agent seconds later, so from below the
    ephemeral range, where no connection made meanwhile can take it (runner.backends.ports)."""
    return listen_port()


def node(rank: int, run_dir: Path, port: int) -> Job:
    """Node `rank` of a two-node job (one process each) whose rendezvous is at 127.0.0.1:`port`."""
    # threads=1: each "node" would take all of this machine's cores, and a CPU kernel's
    # result depends (in its last bits) on how many threads split its sums.
    args = [
        "launch", DIGITS, *SPEC, "--set=resources.nodes=2", "--set=resources.procs_per_node=1", "--set=threads=1",
        f"--set=checkpoint.dir={run_dir}", "--quiet", f"--node-rank={rank}",
        f"--rdzv-endpoint=127.0.0.1:{port}", "--run-id=test-nodes",
    ]  # fmt: skip
    return Job(*args, cwd=run_dir.parent, env=ENV)


def first_of(jobs: list[Job], pattern: str, timeout: float) -> float:
    """When a line matching `pattern` first came from any of `jobs` (global rank 0, which
    alone prints, may be on either node after a re-rendezvous)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [at for job in jobs for at, line in list(job.lines) if re.search(pattern, line)]
        if found:
            return min(found)
        time.sleep(0.02)
    raise AssertionError(f"no /{pattern}/ in {timeout} s:\n" + "\n---\n".join(job.out for job in jobs))


def test_a_node_lost_mid_run_is_replaced_and_the_job_recovers_by_itself_bitwise(
    reference: dict, tmp_path: Path
) -> None:
    """Two torchrun agents on 127.0.0.1 (nnodes 2, c10d rendezvous at node 0): node 1's whole
    process tree is killed, a replacement starts, and the group re-forms in the same launch
    of node 0 and finishes."""
    run_dir, port = tmp_path / "run", free_port()
    first, second = node(0, run_dir, port), node(1, run_dir, port)
    wait_for_a_checkpoint_after(9, run_dir, first)
    killed = time.monotonic()
    kill_tree(second.proc.pid)
    second.finish()
    replacement = node(1, run_dir, port)
    recovered = first_of([first, replacement], r"resumed from step \d+", timeout=180)
    # Node 0 said it waits for the job's nodes (it looked hung), and said nothing of C++ frames.
    assert re.search(r"launch: restarting .* waiting up to 900 s for the job's nodes", first.out), first.out
    assert first.finish() == 0, first.out
    assert replacement.finish() == 0, replacement.out
    assert not re.search(r"frame #|Traceback|failed \(exitcode", first.out + replacement.out), first.out
    print(f"node lost -> training again: {recovered - killed:.1f} s")
    assert same_tensors(read_weights(run_dir / "final/model.safetensors"), reference["weights"])


def test_losing_the_rendezvous_host_ends_the_other_node_with_75_and_restarting_both_resumes_bitwise(
    reference: dict, tmp_path: Path
) -> None:
    """Node 0 hosts the rendezvous, so no group can re-form without it: the other node's
    launcher exits 75 (a lost peer, which the Job's podFailurePolicy ignores) within
    seconds, and both nodes started again, as the Indexed Job does, resume bitwise."""
    run_dir = tmp_path / "run"
    port = free_port()
    first, second = node(0, run_dir, port), node(1, run_dir, port)
    wait_for_a_checkpoint_after(9, run_dir, first)
    killed = time.monotonic()
    kill_tree(first.proc.pid)
    first.finish()
    assert second.finish(timeout=120) == 75, second.out
    print(f"rendezvous host lost -> the other node exited 75 in {time.monotonic() - killed:.1f} s")
    assert "exit 75" in second.out.strip().splitlines()[-1], second.out
    # Said in a few true lines: not torch's C++ stack traces, tracebacks, or a promise to re-form.
    assert not re.search(r"frame #|Traceback|failed \(exitcode|group re-forms and resumes", second.out), second.out
    port = free_port()
    first, second = node(0, run_dir, port), node(1, run_dir, port)
    assert first.finish() == 0, first.out
    assert second.finish() == 0, second.out
    assert re.search(r"resumed from step \d+", first.out + second.out), first.out + second.out
    assert same_tensors(read_weights(run_dir / "final/model.safetensors"), reference["weights"])


def test_bad_input_under_two_processes_is_one_line_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    # Found by the spec's validation, before any process starts.
    result = runner_cli("submit", DIGITS, *SPEC, TWO, "--set=batch_size=33", "--set=checkpoint.dir=run", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == "", result
    assert result.stderr.count("\n") == 1 and "batch_size" in result.stderr and "multiple of 2" in result.stderr
    assert not (tmp_path / "run").exists()
    # Found by rank 0 reading the run directory: it holds another job's checkpoints.
    other = runner_cli("run", DIGITS, "--set=model=mlp", "--set=epochs=1", "--set=device=cpu", "--set=checkpoint.dir=run",
                       "--quiet", cwd=tmp_path)  # fmt: skip
    assert other.returncode == 0, other
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")}
    started = time.monotonic()
    result = runner_cli("submit", DIGITS, *SPEC, TWO, "--set=checkpoint.dir=run", "--quiet", cwd=tmp_path)
    assert result.returncode == 2, result
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "model ('mlp' -> 'cnn')" in errors[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")} == before
    assert time.monotonic() - started < 60  # stopped at once, not after torchrun's restarts
