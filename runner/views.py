"""How `runner ls` and `runner status` show runs to a person (rich) or a script (JSON).

Pure: run summaries (runs.summarize) in, renderables and strings out.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Group
from rich.table import Table

STATE_STYLES = {"running": "cyan", "done": "green", "failed": "red", "preempted": "yellow", "stale": "magenta"}


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True)


def key_values(info: dict[str, Any]) -> str:
    return "\n".join(f"{key:>12}: {value}" for key, value in info.items())


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def state(run: dict[str, Any]) -> str:
    name = run["state"]
    return f"[{STATE_STYLES.get(name, 'default')}]{name}[/]"


def epochs(run: dict[str, Any]) -> str:
    return f"{run['epoch']}/{run['epochs'] or '?'}"


def steps(run: dict[str, Any]) -> str:
    return f"{run['step']}" + (f"/{run['steps_total']}" if run.get("steps_total") else "")


def runs_table(runs: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("run", "state", "epoch", "step", "best val_acc", "test_acc", "checkpoint", "backend"):
        table.add_column(column, justify="left" if column in ("run", "state", "backend") else "right")
    for run in runs:
        checkpoints = run["checkpoints"]
        table.add_row(
            run["run"],
            state(run),
            epochs(run),
            steps(run),
            percent(run["best_val_acc"]),
            percent(run["test_acc"]),
            age(checkpoints[0]["age_s"]) if checkpoints else "-",
            run["backend"] or "-",
        )
    return table


def run_detail(run: dict[str, Any]) -> Group:
    about = Table.grid(padding=(0, 2))
    about.add_column(style="bold")
    about.add_column()
    where = ", ".join(f"{k} {v}" for k, v in run["where"].items())
    rows = [
        ("run", run["run"]),
        ("job", f"{run['name']}: {run['model']} on {run['dataset']}"),
        ("state", state(run) + (f"  {run['message']}" if run["message"] else "")),
        ("progress", f"epoch {epochs(run)}  step {steps(run)}"),
        ("updated", age(run["heartbeat_age_s"])),
        ("backend", f"{run['backend'] or '-'}" + (f" ({where})" if where else "")),
        ("resumes", str(run["resumes"])),
        ("best val_acc", percent(run["best_val_acc"])),
        ("test_acc", percent(run["test_acc"])),
    ]
    last = run["last_epoch"]
    if last:
        rows.append(
            ("last epoch", f"train_loss {last['train_loss']:.4f}  val_loss {_num(last.get('val_loss'))}  "
                           f"val_acc {percent(last.get('val_acc'))}  {_num(last.get('samples_per_s'), ',.0f')} samples/s")
        )  # fmt: skip
    for key, value in rows:
        about.add_row(key, value)
    checkpoints = Table(title="checkpoints", title_justify="left", box=None, header_style="bold", pad_edge=False)
    for column in ("step", "size", "age"):
        checkpoints.add_column(column, justify="right")
    for c in run["checkpoints"]:
        checkpoints.add_row(str(c["step"]), f"{c['size'] / 1e6:.1f} MB", age(c["age_s"]))
    return Group(about, "", checkpoints) if run["checkpoints"] else Group(about)


def _num(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)
