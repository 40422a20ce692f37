"""What augmentation on the device costs per training step, and what it does to a run.

    python benchmarks/augment.py [--device cpu|cuda] [--threads 2] [--repeats 50] [--epochs 3]

Two measurements, side by side in this one run; nothing here is a test.

1. Per step, in this process: the time of `runner.data.augment.augment` on one uint8
   batch as runner trains on it (digits/MNIST: 128 x 1 x 28 x 28 with the cnn; CIFAR-10:
   256 x 3 x 32 x 32 with resnet18), each augmentation alone and as the examples list
   them, against one training step of the model on that batch (forward, backward,
   Adam) — the median of `--repeats` timings after warm-up, synchronised on a GPU.
2. Whole runs: `runner run jobs/digits.toml` (scikit-learn's digits: offline) for
   `--epochs` with no augmentation, with translate, and with crop + translate, each in a process of its
   own: samples/s of the last epoch and the test accuracy each recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CASES = [  # (data set, batch shape, model, model options)
    ("digits/mnist", (128, 1, 28, 28), "cnn", {}),
    ("cifar10", (256, 3, 32, 32), "resnet18", {}),
]
COMBINATIONS = [["flip"], ["crop"], ["translate"], ["crop", "translate"], ["crop", "flip"]]


def timed(fn, device: str, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` calls, after 3 untimed ones."""
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def training_step(x, net):
    """One forward, backward and Adam step of `net` on the uint8 batch `x`, as a callable."""
    import torch

    y = torch.randint(0, 10, (len(x),), device=x.device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x.float().div_(255)), y).backward()
        optimizer.step()

    return step


def per_step(device: str, repeats: int) -> list[dict]:
    import torch

    from runner.data.augment import augment
    from runner.models.registry import build_model

    rows = []
    for name, shape, model, options in CASES:
        x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).to(device)
        step_s = timed(
            training_step(x, build_model(model, options, shape[1:], 10).to(device)), device, max(5, repeats // 5)
        )
        for names in COMBINATIONS:
            steps = iter(range(10**9))  # a new draw each call, as each step has
            cost = timed(
                lambda x=x, names=names, steps=steps: augment(x, names, seed=0, step=next(steps)), device, repeats
            )
            rows.append({"data": name, "batch": "x".join(map(str, shape)), "model": model,
                         "augment": "+".join(names), "augment_ms": cost * 1e3, "step_ms": step_s * 1e3})  # fmt: skip
    return rows


def whole_run(augment: list[str], epochs: int, threads: int, workdir: Path) -> dict:
    run_dir = workdir / ("plain" if not augment else "-".join(augment))
    command = [
        sys.executable, "-m", "runner", "run", str(REPO / "jobs/digits.toml"), "--quiet",
        "--set=device=cpu", f"--set=epochs={epochs}", f"--set=threads={threads}",
        f"--set=data.augment={json.dumps(augment)}", f"--set=checkpoint.dir={run_dir}",
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=workdir, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True)
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last_epoch = [r for r in records if "samples_per_s" in r][-1]
    return {"augment": "+".join(augment) or "none", "wall_s": wall,
            "samples_per_s": last_epoch["samples_per_s"], "test_acc": records[-1]["test_acc"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print(f"## Augmentation per step ({args.device}, {args.threads} threads, median of {args.repeats})\n")
    print("| data | batch | augment | augment ms | training step ms (model) | share of a step |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for r in per_step(args.device, args.repeats):
        share = r["augment_ms"] / r["step_ms"]
        print(f"| {r['data']} | {r['batch']} | {r['augment']} | {r['augment_ms']:.2f} | "
              f"{r['step_ms']:.1f} ({r['model']}) | {share:.1%} |")  # fmt: skip
    print(f"\n## Whole runs: jobs/digits.toml, {args.epochs} epochs, CPU, {args.threads} threads\n")
    print("| augment | wall s | samples/s (last epoch) | test acc |")
    print("| --- | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for augment in ([], ["translate"], ["crop", "translate"]):
            r = whole_run(augment, args.epochs, args.threads, Path(tmp))
            print(f"| {r['augment']} | {r['wall_s']:.1f} | {r['samples_per_s']:,.0f} | {r['test_acc']:.2%} |")


if __name__ == "__main__":
    main()
