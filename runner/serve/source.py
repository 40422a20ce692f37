"""Where the served model comes from: a reference resolved to a run directory, its
weights loaded, and a fingerprint that says when they changed.

`resolve` is the one call that turns what the user named (a run directory, a URL, or a
job's `PREFIX/promoted`: its promoted model) into the run to serve, through the use
side's `open_model_run` as `predict` and `export` do. `load` and `fingerprint` both go
through it, so the reload watcher follows a new promotion as it follows new final weights.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runner import storage
from runner.rundir.layout import FINAL_WEIGHTS, RunDir
from runner.use.source import open_model_run
from runner.use.trained import Trained, load_trained


def _quiet(message: str) -> None:
    pass


def resolve(ref: str, note: Callable[[str], None] = _quiet) -> RunDir:
    """The run directory `ref` names (for `PREFIX/promoted`, the promoted run: `note` hears
    which), or a one-line UserError (exit 2, or a failed reload). The watcher calls it every
    few seconds, quietly."""
    return open_model_run(ref, note)


def fingerprint(run_dir: RunDir) -> str:
    """What changes when the run's final weights do: the run, and the file's size and mtime
    ("" while it has none). Cheap: one metadata request, never the weights themselves."""
    url = run_dir.path(FINAL_WEIGHTS)
    try:
        size, _ = storage.stored_size_and_md5(url)
        return f"{run_dir.url} {size} {storage.modified(url).isoformat()}"
    except FileNotFoundError:
        return f"{run_dir.url} -"


@dataclass(frozen=True)
class Loaded:
    """A model ready to serve, and what `GET /v1/model` says about it."""

    trained: Trained  # on `device`, in eval mode
    run: str  # the run directory's URL
    fingerprint: str
    info: dict[str, Any]  # run, weights, step, classes, input_shape, test_acc, trained_at, device


def load(ref: str, device: str = "cpu") -> Loaded:
    """Resolve `ref`, load its weights (the final ones; the newest checkpoint's for a run that
    has none yet) onto `device`, and describe them. Blocking: file and bucket reads, torch."""
    from runner.rundir import summary

    run_dir = resolve(ref)
    mark = fingerprint(run_dir)  # before loading: a change meanwhile is seen on the next look
    trained = load_trained(run_dir)
    trained.model.to(device)
    about = summary.read(run_dir)
    info = {
        "run": run_dir.url,
        "weights": trained.source,
        "step": about["step"],
        "model": trained.metadata.get("model"),
        "dataset": trained.metadata.get("dataset"),
        "classes": list(trained.classes),
        "input_shape": list(trained.input_shape),
        "test_acc": about["test_acc"],
        "trained_at": _trained_at(run_dir),
        "device": device,
    }
    return Loaded(trained, run_dir.url, mark, info)


def _trained_at(run_dir: RunDir) -> str | None:
    """When the final weights were written, ISO 8601 in UTC (None while there are none)."""
    try:
        when = storage.modified(run_dir.path(FINAL_WEIGHTS))
    except FileNotFoundError:
        return None
    if when.tzinfo is None:  # local files: fsspec gives naive UTC
        when = when.replace(tzinfo=datetime.UTC)
    return when.astimezone(datetime.UTC).isoformat(timespec="seconds")
