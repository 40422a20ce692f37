"""What a run directory says about its run: state, progress, metrics, checkpoints.

Everything here is read from the run directory alone (spec.toml, metrics.jsonl,
status.json, the checkpoint commit records), so it works the same for a run on this
machine, in a bucket, or written by a pod that no longer exists. `summarize` is pure;
`read` and `find` are the thin edges that fetch the files.
"""

from __future__ import annotations

import json
import time
import tomllib
from typing import Any

from runner import heartbeat, storage
from runner.errors import UserError
from runner.rundir import CHECKPOINTS, METRICS, SPEC, STATUS, RunDir


def summarize(
    url: str,
    spec: dict[str, Any],
    metrics: list[dict[str, Any]],
    status: dict[str, Any] | None,
    checkpoints: list[Any],
    now: float,
) -> dict[str, Any]:
    """One run as plain data: the documented `runner status --json` (pure).

    `checkpoints` are checkpoint.Entry objects, newest first.
    """
    epochs = [r for r in metrics if "train_loss" in r]
    final = metrics[-1] if metrics and "test_acc" in metrics[-1] else None
    state = heartbeat.state(status, final is not None, now)
    status = status or {}
    val_accs = [r["val_acc"] for r in epochs if r.get("val_acc") is not None]
    steps = [status.get("step"), checkpoints[0].step if checkpoints else None, epochs[-1]["step"] if epochs else None]
    return {
        "run": url,
        "name": spec.get("name"),
        "model": spec.get("model"),
        "dataset": spec.get("data", {}).get("dataset"),
        "state": state,
        "message": status.get("message") or None,
        "epoch": len(epochs),
        "epochs": spec.get("epochs"),
        "step": max((s for s in steps if s is not None), default=0),
        "steps_total": status.get("steps_total"),
        "best_val_acc": max(val_accs, default=None),
        "test_acc": final["test_acc"] if final else None,
        "last_epoch": epochs[-1] if epochs else None,
        "checkpoints": [{"step": e.step, "size": e.size, "age_s": round(now - e.time, 1)} for e in checkpoints],
        "resumes": status.get("resumes", 0),
        "backend": status.get("backend"),
        "where": {k: status[k] for k in ("host", "pid", "job", "namespace", "pod") if status.get(k) is not None},
        "heartbeat_age_s": round(now - status["updated"], 1) if "updated" in status else None,
    }


def read(run_dir: RunDir) -> dict[str, Any]:
    """Fetch a run directory's files and summarize them."""
    from runner.checkpoint import CheckpointStore

    spec_text = storage.read_text(run_dir.path(SPEC))
    metrics_text = storage.read_text(run_dir.path(METRICS))
    status_text = storage.read_text(run_dir.path(STATUS))
    return summarize(
        run_dir.url,
        tomllib.loads(spec_text) if spec_text else {},
        [json.loads(line) for line in metrics_text.splitlines() if line.strip()],
        json.loads(status_text) if status_text else None,
        CheckpointStore(run_dir.url, keep=1).refresh(),
        time.time(),
    )


def find(prefix: str) -> list[RunDir]:
    """The run directories directly under `prefix`, or `prefix` itself if it is one."""
    storage.check_reachable(prefix, "PREFIX")
    names = storage.list_names(prefix)
    if not names:
        raise UserError(f"{prefix}: nothing there; name a directory or bucket prefix that holds run directories")
    if SPEC in names or CHECKPOINTS in names:
        return [RunDir(prefix)]
    runs = [RunDir(storage.join(prefix, name)) for name in names]
    return [r for r in runs if r.looks_like_a_run()]


def state_of(url: str) -> tuple[str, dict[str, Any]]:
    """A run's state and its status.json (empty if none): what `logs -f` and `cancel` poll."""
    status_text = storage.read_text(storage.join(url, STATUS))
    status = json.loads(status_text) if status_text else {}
    return heartbeat.state(status or None, False, time.time()), status
