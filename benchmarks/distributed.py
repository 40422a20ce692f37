"""One process against two on the same global batch, on this machine's CPU: samples/s and wall.

    python benchmarks/distributed.py [--epochs 3] [--batch 128] [--recoveries 3]

Runs `runner submit jobs/digits.toml` (scikit-learn's digits: offline) with
procs_per_node = 1 (all the cores) and = 2 (torchrun, gloo, half the cores each),
one after the other in this one run, and prints a Markdown table: wall time of the
whole command (start-up, torchrun, data, training, saves), samples/s of the last
epoch (runner's metrics.jsonl), and the test accuracy each recorded. Nothing here is
a test. On 2 cores two processes cannot be faster than one: they share the same
cores and add a gradient all-reduce per step, so the figures show the overhead.

Then, `--recoveries` times, the cost of losing a process: a 2-process run whose
second worker is SIGKILLed after its first epoch, timed from the kill to runner's
"resumed from step" line (torchrun notices, stops the survivor, re-forms the group,
the new processes start and load the newest checkpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
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


def children(pid: int) -> list[int]:
    """The child processes of `pid` (Linux /proc)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def recovery(epochs: int, batch: int, cores: int, workdir: Path) -> float:
    """Seconds from SIGKILLing one of two workers to training again (the group re-formed)."""
    workdir.mkdir(parents=True, exist_ok=True)
    run_dir = workdir / "recovery"
    command = [
        sys.executable, "-m", "runner", "submit", str(REPO / "jobs/digits.toml"),
        "--set=device=cpu", f"--set=epochs={epochs + 2}", f"--set=batch_size={batch}",
        "--set=resources.procs_per_node=2", f"--set=threads={max(1, cores // 2)}",
        "--set=checkpoint.every_steps=5", f"--set=checkpoint.dir={run_dir}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed, resumed = 0.0, None
    for line in proc.stdout:
        if not killed and line.startswith("epoch 1/"):
            (torchrun,) = children(proc.pid)
            os.kill(children(torchrun)[-1], signal.SIGKILL)
            killed = time.perf_counter()
        elif killed and resumed is None and line.startswith("resumed from step"):
            resumed = time.perf_counter() - killed
    if proc.wait() != 0 or resumed is None:
        raise SystemExit(f"the recovery run ended with exit {proc.returncode} (resumed: {resumed})")
    return resumed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--recoveries", type=int, default=3)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(procs, args.epochs, args.batch, cores, Path(tmp)) for procs in (1, 2)]
        recoveries = [recovery(args.epochs, 32, cores, Path(tmp) / str(i)) for i in range(args.recoveries)]
    print(f"digits CNN, {args.epochs} epochs, global batch {args.batch}, {cores} CPU cores\n")
    print("| processes | wall (s) | samples/s (last epoch) | test_acc |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['procs']} | {r['wall_s']:.1f} | {r['samples_per_s']:,.0f} | {r['test_acc']:.2%} |")
    if recoveries:
        seconds = sorted(recoveries)
        print(
            f"\none of 2 workers SIGKILLed after epoch 1 (global batch 32, a checkpoint every 5 steps), "
            f"{len(recoveries)} times: training again after {', '.join(f'{s:.1f}' for s in seconds)} s "
            f"(median {seconds[len(seconds) // 2]:.1f} s)"
        )


if __name__ == "__main__":
    main()
