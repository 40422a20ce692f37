"""What a run directory says about its run: state, progress, metrics, checkpoints.

Everything here is read from the run directory alone (spec.toml, metrics.jsonl,
status.json, the checkpoint commit records), so it works the same for a run on this
machine, in a bucket, or written by a pod that no longer exists. `summarize` is pure;
`read` and `state_of` are the thin edges that fetch the files (through RunDir).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from runner.rundir import heartbeat
from runner.rundir.layout import RunDir, prefix_of

if TYPE_CHECKING:
    from runner.rundir.checkpoints import Entry


def summarize(
    url: str,
    spec: dict[str, Any],
    metrics: list[dict[str, Any]],
    status: dict[str, Any] | None,
    checkpoints: list[Entry],
    now: float,
) -> dict[str, Any]:
    """One run as plain data: the documented `runner status --json` (pure).

    `checkpoints`: the committed ones, newest first; `now`: Unix seconds.
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
        "data": status.get("data"),  # classes, input_shape, mean, std, fingerprint
        "heartbeat_age_s": round(now - status["updated"], 1) if "updated" in status else None,
    }


def read(run_dir: RunDir) -> dict[str, Any]:
    """Fetch a run directory's files and summarize them."""
    return summarize(
        run_dir.url,
        run_dir.read_spec() or {},
        run_dir.read_metrics(),
        run_dir.read_status(),
        run_dir.checkpoint_index().refresh(),
        time.time(),
    )


def state_of(run_dir: RunDir) -> tuple[str, dict[str, Any]]:
    """A run's state and its status.json (empty if none): what `logs -f` and `cancel` poll."""
    status = run_dir.read_status()
    return heartbeat.state(status, False, time.time()), status or {}


def promoted_runs(runs: list[RunDir]) -> set[str]:
    """The URLs among `runs` that hold their job's promoted model (the newest promotion record
    in the folder each is in; its weights are not checked here: `ls` reads no weights)."""
    from runner.rundir.promotions import Promotions

    found = set()
    for prefix in {p for r in runs if (p := prefix_of(r.url)) is not None}:
        _, promotion = Promotions(prefix).newest()
        if promotion is not None:
            found.add(Promotions(prefix).run_dir(promotion).url.rstrip("/"))
    return {r.url for r in runs if r.url.rstrip("/") in found}
