"""One process against two on the same global batch, on this machine's CPU: samples/s and wall.

    python benchmarks/distributed.py [--epochs 3] [--batch 128]

Runs `runner submit jobs/digits.toml` (scikit-learn's digits: offline) with
procs_per_node = 1 (all the cores) and = 2 (torchrun, gloo, half the cores each),
one after the other in this one run, and prints a Markdown table: wall time of the
whole command (start-up, torchrun, data, training, saves), samples/s of the last
epoch (runner's metrics.jsonl), and the test accuracy each recorded. Nothing here is
a test. On 2 cores two processes cannot be faster than one: they share the same
cores and add a gradient all-reduce per step, so the figures show the overhead.
"""

from __future__ import annotations

import argparse
import json
import os
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(procs, args.epochs, args.batch, cores, Path(tmp)) for procs in (1, 2)]
    print(f"digits CNN, {args.epochs} epochs, global batch {args.batch}, {cores} CPU cores\n")
    print("| processes | wall (s) | samples/s (last epoch) | test_acc |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['procs']} | {r['wall_s']:.1f} | {r['samples_per_s']:,.0f} | {r['test_acc']:.2%} |")


if __name__ == "__main__":
    main()
