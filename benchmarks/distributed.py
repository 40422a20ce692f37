"""One process against two on the same global batch, on this machine's CPU: samples/s and wall.

    python benchmarks/distributed.py [--epochs 3] [--batch 128] [--recoveries 3]

Runs `runner submit jobs/digits.toml` (scikit-learn's digits: offline) with
procs_per_node = 1 (all the cores) and = 2 (torchrun, gloo, half the cores each),
one after the other in this one run, and prints a Markdown table: wall time of the
whole command (start-up, torchrun, data, training, saves), samples/s of the last
epoch (runner's metrics.jsonl), and the test accuracy each recorded. Nothing here is
a test. On 2 cores two processes cannot be faster than one: they share the same
cores and add a gradient all-reduce per step, so the figures show the overhead.

Then, `--recoveries` times each, the cost of losing a process and of losing a node,
timed from a SIGKILL after epoch 1 to runner's "resumed from step" line: one of the
2 workers of a `runner submit` (torchrun notices, stops the survivor, re-forms the
group, two new processes start and load the newest checkpoint); and node 1 of two
`runner launch` nodes on this machine (c10d rendezvous at node 0), its whole process
tree killed and a replacement started at once, as Kubernetes would after a delay.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(procs: int, epochs: int, batch: int, cores: int, workdir: Path) -> dict:
    run_dir = workdir / f"w{procs}"
    command = [
        sys.executable, "-m", "runner", "submit", str(REPO / "jobs/digits.toml"), "--quiet",
        "--set=device=cpu", f"--set=epochs={epochs}", f"--set=batch_size={batch}",
        f"--set=resources.procs_per_node={procs}", f"--set=threads={max(1, cores // procs)}",
        f"--set=checkpoint.dir={run_dir}",
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=workdir, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True)
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs_ = [r for r in records if "samples_per_s" in r]
    return {
        "procs": procs,
        "wall_s": wall,
        "samples_per_s": epochs_[-1]["samples_per_s"],
        "test_acc": records[-1]["test_acc"],
    }


class Process:
    """A runner command whose output lines are collected with their times, on a thread."""

    def __init__(self, args: list[str], workdir: Path):
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runner", *args],
            cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: list[tuple[float, str]] = []
        threading.Thread(target=lambda: self.lines.extend((time.perf_counter(), s) for s in self.proc.stdout)).start()


def first(processes: list[Process], prefix: str, timeout: float = 300) -> float:
    """When a line starting with `prefix` first came from any of `processes`."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if found := [at for p in processes for at, line in list(p.lines) if line.startswith(prefix)]:
            return min(found)
        time.sleep(0.01)
    raise SystemExit(f"no line starting {prefix!r} in {timeout} s")


def tree(pid: int) -> list[int]:
    """`pid` and every process below it (Linux /proc)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    below = [int(c) for c in path.read_text().split()] if path.exists() else []
    return [pid, *(p for child in below for p in tree(child))]


def spec_args(run_dir: Path, epochs: int, procs: int, threads: int) -> list[str]:
    return [
        str(REPO / "jobs/digits.toml"), "--set=device=cpu", f"--set=epochs={epochs}", "--set=batch_size=32",
        f"--set=resources.procs_per_node={procs}", f"--set=threads={threads}",
        "--set=checkpoint.every_steps=5", f"--set=checkpoint.dir={run_dir}",
    ]  # fmt: skip


def worker_loss(epochs: int, cores: int, workdir: Path) -> float:
    """Seconds from SIGKILLing one of two workers after epoch 1 to training again."""
    workdir.mkdir(parents=True, exist_ok=True)
    job = Process(["submit", *spec_args(workdir / "run", epochs + 2, 2, max(1, cores // 2))], workdir)
    first([job], "epoch 1/")
    _, torchrun, *workers = tree(job.proc.pid)
    os.kill(workers[-1], signal.SIGKILL)
    killed = time.perf_counter()
    back = first([job], "resumed from step") - killed
    if job.proc.wait() != 0:
        raise SystemExit(f"the run whose worker was killed ended with exit {job.proc.returncode}")
    return back


def node_loss(epochs: int, workdir: Path) -> float:
    """Seconds from SIGKILLing node 1 of two (one process each, on this machine) after epoch 1
    to training again, a replacement node started at once (as Kubernetes would)."""
    workdir.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [*spec_args(workdir / "run", epochs + 2, 1, 1), "--set=resources.nodes=2"]

    def node(rank: int) -> Process:
        rdzv = [f"--node-rank={rank}", f"--rdzv-endpoint=127.0.0.1:{port}", "--run-id=bench"]
        return Process(["launch", *args, *rdzv], workdir)

    nodes = [node(0), node(1)]
    first(nodes, "epoch 1/")
    for pid in tree(nodes[1].proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    killed = time.perf_counter()
    nodes[1].proc.wait()
    nodes[1] = node(1)
    back = first(nodes, "resumed from step") - killed
    if any(n.proc.wait() != 0 for n in nodes):
        raise SystemExit(f"a node ended with exit {[n.proc.returncode for n in nodes]}")
    return back


def times(seconds: list[float]) -> str:
    seconds = sorted(seconds)
    return f"{', '.join(f'{s:.1f}' for s in seconds)} s (median {seconds[len(seconds) // 2]:.1f} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--recoveries", type=int, default=3)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(procs, args.epochs, args.batch, cores, Path(tmp)) for procs in (1, 2)]
        workers = [worker_loss(args.epochs, cores, Path(tmp) / f"worker{i}") for i in range(args.recoveries)]
        nodes = [node_loss(args.epochs, Path(tmp) / f"node{i}") for i in range(args.recoveries)]
    print(f"digits CNN, {args.epochs} epochs, global batch {args.batch}, {cores} CPU cores\n")
    print("| processes | wall (s) | samples/s (last epoch) | test_acc |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['procs']} | {r['wall_s']:.1f} | {r['samples_per_s']:,.0f} | {r['test_acc']:.2%} |")
    if args.recoveries:
        print("\nfrom a SIGKILL after epoch 1 (global batch 32, a checkpoint every 5 steps) to training again:")
        print(f"- one of 2 workers of one node: {times(workers)}")
        print(f"- node 1 of 2 (its whole process tree), a replacement started at once: {times(nodes)}")


if __name__ == "__main__":
    main()
