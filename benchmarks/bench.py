"""Benchmarks: runner against the tutorials' own loop, checkpoint cost, recovery time, start-up.

    python benchmarks/bench.py                          # everything, ~7 minutes on 2 CPU cores
    python benchmarks/bench.py --quick                  # a smoke run on 10,000 images, ~3 minutes
    python benchmarks/bench.py --only training --models mlp --epochs 5
    python benchmarks/bench.py --device cuda --models mlp,cnn,resnet18 --conv-epochs 3

Training: each model is trained twice on the same files, in a fresh process each:
by the tutorials' loop (benchmarks/tutorial.py: torchvision MNIST + ToTensor, a
DataLoader, zero_grad/forward/backward/step) and by the real `runner run` command on
the equivalent spec. Both use the same optimizer (Adam, lr 0.001), batch size (128),
seed, and thread count (--threads, default: the cores this process may use), train
on all 60,000 images and test on the 10,000. Samples/s covers the training loop of
each epoch (data loading included, evaluation excluded), timed the same way on both
sides; runner's is what it reports in metrics.jsonl. Wall time is the whole process,
start to exit; memory is the process's peak resident set (ru_maxrss).

When the data root holds no MNIST files, MNIST-format files are written from
scikit-learn's digits (see synthetic.py), so this runs offline.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import shutil
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import checkpoints
from proc import REPO, Child, Finished, python, run, runner_command
from specs import Job, reported
from synthetic import has_mnist, write_synthetic_mnist

HERE = Path(__file__).resolve().parent
MODELS = ("mlp", "cnn", "resnet18")
CONV_NETS = ("cnn", "resnet18")  # slow on a CPU: trained for --conv-epochs
SECTIONS = ("training", "checkpoints", "startup")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--models", default="mlp,cnn", help="comma-separated: mlp, cnn, resnet18 (default mlp,cnn)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs for the MLP (default 3)")
    parser.add_argument("--conv-epochs", type=int, default=1, help="epochs for cnn and resnet18 (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N], for both sides (default cpu)")
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch CPU threads, both sides (default: all cores)",
    )
    parser.add_argument("--data-root", type=Path, default=REPO / "data", help="where MNIST/raw/ is, if anywhere")
    parser.add_argument("--cifar-root", type=Path, help="real CIFAR-10 (cifar-10-batches-py/) for resnet18")
    parser.add_argument("--compile", action="store_true", help="runner's side with compile = true (torch.compile)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections: {', '.join(SECTIONS)}")
    parser.add_argument("--ckpt-epochs", type=int, default=1, help="epochs of the CNN for checkpoint overhead")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds of training before the SIGTERM")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="N runs of each training, stop and resume measurement (the best kept), 2N of each overhead",
    )
    parser.add_argument("--quick", action="store_true", help="10,000 synthetic images, 1 epoch, saves every 5 s")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (specs, runs, data)")
    args = parser.parse_args(argv)
    args.models, args.only = args.models.split(","), args.only.split(",")
    if unknown := [m for m in args.models if m not in MODELS] + [o for o in args.only if o not in SECTIONS]:
        parser.error(f"unknown: {', '.join(unknown)}; models: {', '.join(MODELS)}; sections: {', '.join(SECTIONS)}")
    if args.quick:
        args.epochs = args.conv_epochs = args.ckpt_epochs = 1
    return args


# -- data ---------------------------------------------------------------------


def mnist_root(args: argparse.Namespace, work: Path) -> tuple[Path, str, int]:
    """(root, description, training samples): real MNIST if it is there, else synthetic files."""
    if has_mnist(args.data_root) and not args.quick:
        return args.data_root, "MNIST (real files)", 60_000
    n_train, n_test = (10_000, 2_000) if args.quick else (60_000, 10_000)
    root = write_synthetic_mnist(work / "data", n_train, n_test)
    return (
        root,
        f"synthetic MNIST-format files ({n_train:,} train / {n_test:,} test; see benchmarks/synthetic.py)",
        n_train,
    )


# -- training: tutorial loop vs runner ----------------------------------------


def tutorial_side(job: Job) -> dict:
    options = {"model": job.model, "epochs": job.epochs, "dataset": job.dataset, "data-root": job.root,
               "device": job.device, "threads": job.threads}  # fmt: skip
    done = run(python(str(HERE / "tutorial.py"), *(f"--{k}={v}" for k, v in options.items())))
    result = json.loads(done.output.strip().splitlines()[-1])
    return side(done, result["samples_per_s"], result["test_acc"])


def runner_side(job: Job, work: Path) -> dict:
    run_dir = work / "runs" / job.model
    spec = job.write_spec(work / f"bench-{job.model}.toml", str(run_dir))
    done = run(runner_command("run", str(spec), "--quiet", "--fresh", "--overwrite"))
    metrics = reported((run_dir / "metrics.jsonl").read_text())
    return side(done, metrics.samples_per_s, metrics.test_acc)


def side(done: Finished, samples_per_s: float, test_acc: float) -> dict:
    return {"samples_per_s": samples_per_s, "wall_s": done.wall_s, "max_rss_mb": done.max_rss_mb, "test_acc": test_acc}


def best(runs: list[dict]) -> dict:
    """Of repeated runs, the best speed and wall time (noise only ever slows a run down)."""
    return {
        **runs[0],
        "samples_per_s": max(r["samples_per_s"] for r in runs),
        "wall_s": min(r["wall_s"] for r in runs),
    }


def training(args: argparse.Namespace, work: Path, root: Path) -> list[dict]:
    rows = []
    for model in args.models:
        dataset, data_root = (
            ("cifar10", args.cifar_root) if model == "resnet18" and args.cifar_root else ("mnist", root)
        )
        epochs = args.conv_epochs if model in CONV_NETS else args.epochs
        job = Job(model, epochs, args.device, args.threads, dataset, data_root, compile=args.compile)
        say(f"training {model} on {dataset}, {epochs} epoch(s): tutorial loop, then runner")
        tutorial, ours = [], []
        for _ in range(args.repeat):  # back to back, so both sides see the same machine
            tutorial.append(tutorial_side(job))
            ours.append(runner_side(job, work))
        rows.append(
            {"model": model, "dataset": dataset, "epochs": epochs, "compile": args.compile}
            | {"tutorial": best(tutorial), "runner": best(ours)}
        )
    return rows


# -- checkpoints ----------------------------------------------------------------


def checkpoint_costs(args: argparse.Namespace, work: Path, root: Path, n_train: int) -> dict:
    every = 5.0 if args.quick else 30.0
    timed = Job("cnn", args.ckpt_epochs, args.device, args.threads, "mnist", root)
    # Stopped by SIGTERM long before they would end (a GPU trains an epoch in seconds).
    cnn = dataclasses.replace(timed, epochs=10)
    big = dataclasses.replace(cnn, model="resnet18")  # with Adam: a 134 MB training state
    with checkpoints.emulator() as gcs:
        say(f"checkpoint overhead: cnn, {timed.epochs} epoch(s) into gs://, saves every {every:.0f} s vs none")
        overhead = checkpoints.overhead(timed, gcs, work, every, timed.epochs * n_train, pairs=args.repeat)
        say("cost of one save, measured directly: cnn and resnet18 into gs://")
        costs = [checkpoints.save_cost(job, gcs, work, saves=5) for job in (cnn, big)]
        stops, resumes = [], []
        for job, run_dir, env in (
            (cnn, f"gs://{gcs.bucket()}/run", gcs.env),
            (big, f"gs://{gcs.bucket()}/run", gcs.env),
            (big, str(work / "runs" / "stop-local"), {}),
        ):
            say(f"emergency save and resume: {job.model} into {run_dir}, {args.repeat} time(s)")
            tries = []
            for _ in range(args.repeat):  # each stop starts over (--fresh --overwrite)
                stop = checkpoints.emergency_save(job, run_dir, env, work, args.settle)
                tries.append((stop, checkpoints.resume(stop, job.batches(n_train))))
            # The fastest of each, as for training: other work on the cores only slows a try down.
            stops.append(min((stop for stop, _ in tries), key=lambda stop: stop.sigterm_to_exit_s))
            resumes.append(min((res for _, res in tries), key=lambda res: res.to_first_step_s))
    return {
        "overhead": [dataclasses.asdict(o) for o in overhead],
        "save_costs": [{**dataclasses.asdict(c), "bound_s": c.bound_s} for c in costs],
        "stops": [{**dataclasses.asdict(s), "spec": str(s.spec)} for s in stops],
        "resumes": [dataclasses.asdict(r) for r in resumes],
    }


# -- start-up ---------------------------------------------------------------------


def startup(repeats: int = 5) -> list[dict]:
    """`runner --help` and `runner validate`: wall time (median of `repeats`), and whether torch was imported."""
    script = Path(sys.executable).with_name("runner")
    command = [str(script)] if script.exists() else runner_command()
    rows = []
    for args in (["--help"], ["validate", "jobs/mlp.toml"], ["validate", "jobs/cifar10.toml"]):  # cifar10: resnet18
        times = sorted(run([*command, *args]).wall_s for _ in range(repeats))
        traced = Child(python("-X", "importtime", "-m", "runner", *args)).finish()
        torch = bool(re.search(r"\|\s+torch$", traced.output, re.MULTILINE))
        rows.append(
            {"command": " ".join(["runner", *args]), "median_s": times[len(times) // 2], "imports_torch": torch}
        )
    return rows


# -- the report -------------------------------------------------------------------


def say(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def machine(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        cpu = names[0] if names else cpu
    except OSError:
        pass
    text = f"{cpu}, {len(os.sched_getaffinity(0))} cores available"
    if device.startswith("cuda"):
        gpu = run(python("-c", "import torch; print(torch.cuda.get_device_name())")).output.strip().splitlines()[-1]
        text += f"; {gpu}"
    return text


def spread(values: list[float]) -> float:
    return (max(values) - min(values)) / (sum(values) / len(values))


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x"


def training_table(rows: list[dict]) -> list[str]:
    lines = [
        "| model | epochs | loop | samples/s | wall s | peak RSS MB | test acc |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        t, r = row["tutorial"], row["runner"]
        label = row["model"] + ("" if row["dataset"] == "mnist" else f" ({row['dataset']})")
        for name, s in (("tutorial", t), ("runner" + (" (compile)" if row["compile"] else ""), r)):
            lines.append(
                f"| {label} | {row['epochs']} | {name} | {s['samples_per_s']:,.0f} | {s['wall_s']:.1f} | "
                f"{s['max_rss_mb']:,.0f} | {s['test_acc']:.2%} |"
            )
        lines.append(
            f"| {label} | | **runner / tutorial** | **{ratio(r['samples_per_s'], t['samples_per_s'])}** | "
            f"**{ratio(t['wall_s'], r['wall_s'])}** | | |"
        )
    return lines


def checkpoint_table(result: dict) -> list[str]:
    none, periodic = result["overhead"]
    extra = periodic["saves"] - none["saves"]
    per_save = (periodic["train_s"] - none["train_s"]) / extra if extra else float("nan")
    every = periodic["every_seconds"]
    # How far apart runs of the same spec landed: an overhead below this is within the noise.
    noise = max(spread([rate for rate, _, _ in o["runs"]]) for o in (none, periodic))
    lines = [
        "| measurement | result |",
        "| --- | ---: |",
        f"| cnn into gs://, saves at epoch ends only ({none['saves']}): samples/s, wall (mean of {len(none['runs'])}) | "
        f"{none['samples_per_s']:,.0f}, {none['wall_s']:.1f} s |",
        f"| same, plus a save every {every:.0f} s ({periodic['saves']} in all): samples/s, wall "
        f"(mean of {len(periodic['runs'])}) | {periodic['samples_per_s']:,.0f}, {periodic['wall_s']:.1f} s |",
        f"| **overhead of saving every {every:.0f} s**: training loop, whole process "
        f"(runs of one spec differ by up to {noise:.1%}) | "
        f"**{periodic['train_s'] / none['train_s'] - 1:.1%}**, {periodic['wall_s'] / none['wall_s'] - 1:.1%} |",
        f"| same, the fastest run of each spec (noise only slows a run down): training loop | "
        f"**{none['best_samples_per_s'] / periodic['best_samples_per_s'] - 1:.1%}** |",
        f"| training time lost per periodic save (so, at one per {every:.0f} s) | "
        f"{per_save:.2f} s ({per_save / every:.1%}) |",
    ]
    for cost in result["save_costs"]:
        lines.append(
            f"| one save of {cost['model']} ({cost['state_mb']:.0f} MB) to gs://, measured directly: training thread "
            f"paused, CPU of runner's upload, of the store's (median of {cost['saves']}) | "
            f"{cost['snapshot_s']:.3f} s, {cost['client_cpu_s']:.3f} s, {cost['server_cpu_s']:.3f} s |"
        )
        lines.append(
            f"| so, at one save per {every:.0f} s, {cost['model']} loses at most (with the store on other "
            f"machines, as GCS is: without its CPU) | **{cost['bound_s'] / every:.1%}** "
            f"({(cost['bound_s'] - cost['server_cpu_s']) / every:.1%}) |"
        )
    for stop in result["stops"]:
        lines.append(
            f"| emergency save, {stop['model']} ({stop['state_mb']:.0f} MB) to {stop['where']}: "
            f"SIGTERM to saved, to exit (runner's save time) | "
            f"**{stop['sigterm_to_saved_s']:.2f} s**, {stop['sigterm_to_exit_s']:.2f} s ({stop['save_s']:.2f} s) |"
        )
    for res in result["resumes"]:
        lines.append(
            f'| resume, {res["model"]} from {res["where"]}: start to "resumed" line, to first step done | '
            f"{res['to_resumed_line_s']:.2f} s, **{res['to_first_step_s']:.2f} s** |"
        )
    return lines


def startup_table(rows: list[dict]) -> list[str]:
    lines = ["| command | wall (median of 5) | imports torch |", "| --- | ---: | --- |"]
    lines += [f"| `{r['command']}` | {r['median_s']:.2f} s | {'yes' if r['imports_torch'] else 'no'} |" for r in rows]
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="runner-bench-"))
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}}
    try:
        root, data, n_train = mnist_root(args, work)
        date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
        results["machine"] = machine(args.device)
        report = [
            f"runner benchmark, {date}: {results['machine']}; torch {version('torch')}, "
            f"torchvision {version('torchvision')}; device {args.device}, {args.threads} torch threads on both sides",
            f"data: {data}",
            "command: python benchmarks/bench.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "",
        ]
        if "training" in args.only:
            results["training"] = training(args, work, root)
            report += [*training_table(results["training"]), ""]
        if "checkpoints" in args.only:
            results["checkpoints"] = checkpoint_costs(args, work, root, n_train)
            report += [*checkpoint_table(results["checkpoints"]), ""]
        if "startup" in args.only:
            results["startup"] = startup()
            report += [*startup_table(results["startup"]), ""]
        print("\n".join(report))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        if args.keep:
            say(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
