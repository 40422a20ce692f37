"""How runs and their results look to a person: ls, status, eval, predict as rich renderables or text.

Pure: run summaries (rundir.summary.summarize) and results in, renderables and strings out.
(JSON output is cli/output.py's.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from runner.use.evaluate import Evaluation
    from runner.use.predict import Prediction
    from runner.use.trained import Trained

STATE_STYLES = {"running": "cyan", "done": "green", "failed": "red", "preempted": "yellow", "stale": "magenta"}


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
            run["run"] + (" [bold green](promoted)[/]" if run.get("promoted") else ""),
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


def evaluation_view(result: Evaluation) -> Group:
    """The evaluation as rich renderables: a summary, per-class accuracy, the confusion matrix."""
    summary = Text(
        f"weights: {result.weights}\n{result.split} split: {result.samples} samples, accuracy "
        f"{result.accuracy:.2%} ({result.correct}/{result.samples}), loss {result.loss:.4f}"
    )
    per_class = Table(title="per class", box=None, header_style="bold", title_justify="left", pad_edge=False)
    for column in ("class", "samples", "correct", "accuracy"):
        per_class.add_column(column, justify="left" if column == "class" else "right")
    for name, n, k in result.per_class():
        per_class.add_row(Text(name), str(n), str(k), f"{k / n:.2%}" if n else "-")
    # Long class names (CIFAR-10's) would not fit as column headers: number the classes then.
    short = all(len(c) <= 5 for c in result.classes)
    heads = list(result.classes) if short else [str(i) for i in range(len(result.classes))]
    matrix = Table(box=None, header_style="bold", pad_edge=False)
    matrix.add_column("")
    for head in heads:
        matrix.add_column(head, justify="right")
    for i, (name, row) in enumerate(zip(result.classes, result.confusion, strict=True)):
        cells = [f"[bold green]{n}[/]" if j == i else (str(n) if n else "[dim]·[/]") for j, n in enumerate(row)]
        matrix.add_row(Text(name if short else f"{i} {name}", style="bold"), *cells)
    title = Text("confusion matrix (rows: true class, columns: predicted)", style="italic")
    return Group(summary, "", per_class, "", title, matrix)


def predictions_text(trained: Trained, predictions: Sequence[Prediction]) -> str:
    """One line per image: its most likely classes with probabilities, and whether it was inverted.
    Plain aligned text, not a table: a table would cut long paths to the terminal's width."""
    width = max(len(p.image) for p in predictions)
    name_width = max(len(c) for c in trained.classes)
    lines = [f"weights: {trained.source}"]
    for p in predictions:
        guesses = "   ".join(f"{c:>{name_width}} {prob:7.2%}" for c, prob in p.top)
        lines.append(f"{p.image:<{width}}   {guesses}" + ("   (inverted)" if p.inverted else ""))
    return "\n".join(lines)
