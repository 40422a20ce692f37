"""The local backend: `runner run` in a child process on this machine.

The child is what a container would run, so a job behaves the same here and on a
cluster. It gets its own session, so a Ctrl-C reaches it exactly once: through
this process, which forwards SIGINT, SIGTERM and SIGHUP.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_command(spec_path: str, overrides: Sequence[str], flags: Sequence[str] = ()) -> list[str]:
    """The `runner run` command line for a spec (pure)."""
    return [sys.executable, "-m", "runner", "run", spec_path, *(f"--set={o}" for o in overrides), *flags]


def submit(spec_path: str, overrides: Sequence[str], flags: Sequence[str] = ()) -> int:
    """Run the job to completion in a child process; returns its exit code."""
    child = subprocess.Popen(run_command(spec_path, overrides, flags), start_new_session=True)
    previous = {sig: signal.signal(sig, lambda s, _: child.send_signal(s)) for sig in FORWARDED}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code  # killed by signal N: the shell's 128+N


def status(run_url: str) -> dict[str, object]:
    """Where a local (or bucket) run directory stands, read from its files alone."""
    from runner import storage
    from runner.checkpoint import CheckpointStore
    from runner.errors import UserError
    from runner.rundir import RunDir

    run_dir = RunDir(run_url)
    if not run_dir.looks_like_a_run():
        raise UserError(f"{run_url}: not a run directory (no spec.toml or checkpoints/)")
    records = run_dir.read_metrics() if storage.exists(run_dir.path("metrics.jsonl")) else []
    epochs = [r for r in records if "train_loss" in r]
    final = records[-1] if records and "test_acc" in records[-1] else None
    checkpoints = CheckpointStore(run_url, keep=1).refresh()
    return {
        "run_dir": run_url,
        "state": "done" if final else "incomplete",
        "epochs_done": len(epochs),
        "step": checkpoints[0].step if checkpoints else (epochs[-1]["step"] if epochs else 0),
        "val_acc": epochs[-1].get("val_acc") if epochs else None,
        "test_acc": final["test_acc"] if final else None,
        "checkpoints": [e.step for e in checkpoints],
    }
