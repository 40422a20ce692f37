"""Guards on behaviour that the rest of the suite covered only loosely or not at all:
a SIGTERM during the final test evaluation, the per-epoch sample order the trainer
really uses, the Job's podFailurePolicy rule by rule, and commands that must never
import torch, run as a user runs them. Each test here was seen to fail with its
behaviour broken (the mutation is named in its docstring)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tests.helpers import JOBS, REPO, read_weights, same_tensors

SMALL = ["device=cpu", "threads=1", "batch_size=32", "model_options={channels=[8,16],hidden=64}"]
STEPS_PER_EPOCH = 41  # 1294 training digits in batches of 32


# -- 1. SIGTERM during the final test-split evaluation ----------------------------------------


def run_in_process(run_dir: Path, console_out: io.StringIO) -> int:
    from runner.spec import load_spec
    from runner.training import session

    spec = load_spec(str(JOBS / "digits.toml"), [*SMALL, "epochs=1", f"checkpoint.dir={run_dir}"])
    return session.run(spec, Console(file=console_out, soft_wrap=True, width=200), quiet=True)


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_sigterm_during_the_final_test_evaluation_saves_exits_143_and_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutation: training/session.py `Session._train` calls `trainer.evaluate(trainer.test)` (the stop ignored):
    the run then exits 0 with final weights instead of 143."""
    from runner.rundir.layout import RunDir
    from runner.training.engine import Trainer

    original = Trainer.evaluate
    calls: list[tuple[str, int | None]] = []

    def sigterm_in_test_evaluation(self: Trainer, split: Any, stop: Any = lambda: False) -> Any:
        which = "test" if split is self.test else "val" if split is self.val else "other"
        if which == "test":
            os.kill(os.getpid(), signal.SIGTERM)  # os.kill runs the Python handler before it returns
            handler = signal.getsignal(signal.SIGTERM)
            calls.append((which, getattr(getattr(handler, "__self__", None), "signum", None)))
        else:
            calls.append((which, None))
        return original(self, split, stop)

    monkeypatch.setattr(Trainer, "evaluate", sigterm_in_test_evaluation)
    stopped_dir, out = tmp_path / "stopped", io.StringIO()
    code = run_in_process(stopped_dir, out)
    # The signal was handled (by the run's Preemption) before the test evaluation began.
    assert calls == [("val", None), ("test", signal.SIGTERM)], calls
    assert code == 143, out.getvalue()
    assert f"stopped by SIGTERM at step {STEPS_PER_EPOCH}" in out.getvalue(), out.getvalue()
    assert "done: test_acc" not in out.getvalue()
    assert not (stopped_dir / "final" / "model.safetensors").exists()
    assert not (stopped_dir / "final").exists()
    records = metrics(stopped_dir)
    assert [r["epoch"] for r in records] == [1] and all("test_acc" not in r for r in records)
    assert RunDir(str(stopped_dir)).checkpoint_index().refresh()[0].step == STEPS_PER_EPOCH
    assert json.loads((stopped_dir / "status.json").read_text())["state"] == "preempted"

    monkeypatch.undo()
    resumed_out = io.StringIO()
    assert run_in_process(stopped_dir, resumed_out) == 0, resumed_out.getvalue()
    assert f"already trained to epoch 1 (step {STEPS_PER_EPOCH}" in resumed_out.getvalue()
    final_records = metrics(stopped_dir)
    assert [r["epoch"] for r in final_records] == [1, 1] and "test_acc" in final_records[-1]

    reference_dir, reference_out = tmp_path / "straight", io.StringIO()
    assert run_in_process(reference_dir, reference_out) == 0, reference_out.getvalue()
    assert same_tensors(
        read_weights(stopped_dir / "final" / "model.safetensors"),
        read_weights(reference_dir / "final" / "model.safetensors"),
    )
    assert final_records[-1] == metrics(reference_dir)[-1]  # the same test loss and accuracy, exactly


# -- 2. each epoch's sample order -------------------------------------------------------------


def test_each_epoch_trains_on_the_batches_epoch_order_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation: training/engine.py `_fit` uses `epoch_order(n, self.cfg.seed, 0)`: epoch 2 repeats
    epoch 1's batches, which this test sees."""
    import torch

    from runner.spec import load_spec
    from runner.training.engine import epoch_order
    from runner.training.session import build_trainer

    seed, epochs = 3, 2  # not the default seed: the spec's seed is the one used
    t = build_trainer(load_spec(str(JOBS / "digits.toml"), [*SMALL, f"epochs={epochs}", f"seed={seed}"]))
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    step = t._step

    def recording(x: torch.Tensor, y: torch.Tensor) -> None:
        seen.append((x.clone(), y.clone()))
        step(x, y)

    monkeypatch.setattr(t, "_step", recording)

    class Quiet:
        def epoch_start(self, epoch: int, batch: int, batches: int) -> None: ...
        def step(self, batch: int, running: Any) -> None: ...
        def epoch_end(self, record: dict[str, Any]) -> None: ...

    assert t.fit(Quiet())
    n, bs = len(t.train), t.cfg.batch_size
    assert t.batches == STEPS_PER_EPOCH and len(seen) == epochs * t.batches
    orders = [epoch_order(n, seed, e) for e in range(epochs)]
    assert not torch.equal(orders[0], orders[1])
    for e in range(epochs):
        for b in range(t.batches):
            x, y = seen[e * t.batches + b]
            idx = orders[e][b * bs : (b + 1) * bs]
            same = torch.equal(x, t.train.x.index_select(0, idx)) and torch.equal(y, t.train.y.index_select(0, idx))
            assert same, f"epoch {e + 1}, batch {b}: not the samples epoch_order({n}, {seed}, {e}) puts there"
    # What the trainer used really did differ between the epochs, batch by batch.
    assert not any(torch.equal(seen[b][1], seen[t.batches + b][1]) for b in range(t.batches - 1))


# -- 3. the Job's podFailurePolicy ------------------------------------------------------------

IMAGE = "us-docker.pkg.dev/my-project/ml/runner:0123456789abcdef"


def rendered_job_specs() -> list[dict[str, Any]]:
    """The Job spec of a plain Job and of a CronJob's job template, as runner renders them."""
    from runner.backends.manifests import render
    from runner.spec import load_spec, to_toml

    specs = []
    for extra in ([], ["schedule.cron=0 3 * * *"]):
        spec = load_spec(str(JOBS / "cnn.toml"), ["checkpoint.dir=gs://my-bucket/runs/cnn", *extra])
        _, workload = render(spec, to_toml(spec), IMAGE)
        specs.append(workload["spec"] if workload["kind"] == "Job" else workload["spec"]["jobTemplate"]["spec"])
    return specs


def first_matching_action(rules: list[dict[str, Any]], exit_code: int, conditions: set[str]) -> str | None:
    """What Kubernetes does with a failed pod: the first rule that matches decides."""
    for rule in rules:
        if "onPodConditions" in rule:
            if any(c["type"] in conditions for c in rule["onPodConditions"]):
                return rule["action"]
            continue
        on = rule["onExitCodes"]
        matched = exit_code in on["values"] if on["operator"] == "In" else exit_code not in on["values"]
        if exit_code != 0 and matched:
            return rule["action"]
    return None


def test_the_pod_failure_policy_rule_by_rule() -> None:
    """Mutations: the FailJob rule's values `[BAD_INPUT]` -> `[1]`; the DisruptionTarget
    rule's action "Ignore" -> "Count". Both fail here. No golden file is involved, so
    UPDATE_GOLDEN=1 cannot turn this test into a self-comparison."""
    for job_spec in rendered_job_specs():
        rules = job_spec["podFailurePolicy"]["rules"]
        assert len(rules) == 3
        ignore, fail, count = rules  # the order matters: the first matching rule decides

        assert ignore["action"] == "Ignore"
        assert ignore["onPodConditions"] == [{"type": "DisruptionTarget"}]
        assert "onExitCodes" not in ignore and set(ignore) == {"action", "onPodConditions"}

        assert fail["action"] == "FailJob" and set(fail) == {"action", "onExitCodes"}
        assert fail["onExitCodes"]["containerName"] == "runner"
        assert fail["onExitCodes"]["operator"] == "In"
        assert fail["onExitCodes"]["values"] == [2]  # bad input: runner's exit code 2
        assert 143 not in fail["onExitCodes"]["values"]

        assert count["action"] == "Count" and set(count) == {"action", "onExitCodes"}
        assert count["onExitCodes"]["containerName"] == "runner"
        assert count["onExitCodes"]["operator"] == "NotIn"
        assert count["onExitCodes"]["values"] == [0, 2]

        containers = {c["name"] for c in job_spec["template"]["spec"]["containers"]}
        assert containers == {"runner"}  # the rules name the container that exists

        # What that means for each way a pod can end, rules evaluated as Kubernetes does.
        assert first_matching_action(rules, 2, set()) == "FailJob"
        # 143 (stopped by SIGTERM, checkpoint saved): never fails the Job; a preempted pod
        # (DisruptionTarget) is free, any other SIGTERM counts as one of `retries`.
        assert first_matching_action(rules, 143, {"DisruptionTarget"}) == "Ignore"
        assert first_matching_action(rules, 143, set()) == "Count"
        assert first_matching_action(rules, 137, {"DisruptionTarget"}) == "Ignore"
        assert first_matching_action(rules, 2, {"DisruptionTarget"}) == "Ignore"  # preempted while starting
        assert first_matching_action(rules, 1, set()) == "Count"
        assert first_matching_action(rules, 137, set()) == "Count"


# -- 4. commands that must not import torch, run for real -------------------------------------

TORCH_PACKAGES = {"torch", "torchvision", "functorch", "torchaudio"}


def imported_modules(stderr: str) -> list[str]:
    """Module names from `python -X importtime` output: the last column of its lines."""
    return [line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding one finished run directory (a small MLP, one epoch)."""
    base = tmp_path_factory.mktemp("ls")
    result = subprocess.run(
        [sys.executable, "-m", "runner", "run", str(JOBS / "digits.toml"), "--set=epochs=1", "--set=model=mlp",
         "--set=model_options={}", "--set=threads=1", "--set=device=cpu", "--set=checkpoint.dir=runs/x", "--quiet"],
        cwd=base, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert (base / "runs" / "x" / "final" / "model.safetensors").exists()
    return base / "runs"


COMMANDS = {
    "validate-cnn": (["validate", "jobs/cnn.toml"], "ok: jobs/cnn.toml (cnn on mnist"),
    "validate-cifar10": (["validate", "jobs/cifar10.toml"], "ok: jobs/cifar10.toml (resnet18 on cifar10"),
    "help": (["--help"], "Usage:"),
    "ls": (["ls", "{runs}"], "state"),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_commands_that_do_not_train_import_no_torch(command: str, request: pytest.FixtureRequest) -> None:
    """Mutations: `import torch` at the top of runner/spec.py fails the validate cases;
    at the top of runner/rundir/summary.py fails ls; at the top of runner/cli/app.py fails all four."""
    args, expected = COMMANDS[command]
    if command == "ls":
        runs = request.getfixturevalue("finished_run")
        args = [a.format(runs=runs) for a in args]
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "runner", *args],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert expected in result.stdout, result.stdout
    modules = imported_modules(result.stderr)
    # The output is there to read (not vacuously empty): the command's own modules appear in it.
    assert "runner.cli" in modules and "typer" in modules, result.stderr[-3000:]
    if command == "ls":
        assert "runner.rundir.summary" in modules and "runner.rundir.checkpoints" in modules
        (row,) = [line for line in result.stdout.splitlines() if line.startswith(f"{args[1]}/x ")]
        assert row.split()[1:4] == ["done", "1/1", "21/21"], result.stdout  # the finished run, listed
    if command.startswith("validate"):
        assert "runner.spec" in modules
    torch_like = [m for m in modules if m.split(".")[0] in TORCH_PACKAGES]
    assert torch_like == [], f"{' '.join(args)} imported {sorted({m.split('.')[0] for m in torch_like})}"
