"""Training curves from metrics.jsonl: loss and accuracy against epoch (or step), runs overlaid.

One colour per run; train solid, validation dashed, test a star where the run ended.
matplotlib's object API on the Agg canvas: no pyplot, no global backend, no display.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from runner import storage
from runner.errors import UserError
from runner.rundir.layout import METRICS, RunDir

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Curves = tuple[str, list[dict[str, Any]]]  # (the run's name, its metrics records)

STYLES = {"train": "-", "val": "--"}
IMAGE_TYPES = ("png", "svg", "pdf")
NO_DATES = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}  # savefig metadata: leave the date out


def read_curves(run_dir: RunDir) -> Curves:
    records = run_dir.read_metrics()
    if not any("train_loss" in r for r in records):
        raise UserError(f"{run_dir.url}: no metrics yet (no {METRICS}: the run has not finished an epoch)")
    return run_dir.url, records


def figure(runs: Sequence[Curves], x: str = "epoch") -> Figure:
    """Loss (left) and accuracy (right) against `x` ("epoch" or "step") for every run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    loss, acc = fig.subplots(1, 2)
    for i, (name, records) in enumerate(runs):
        colour = f"C{i % 10}"  # matplotlib's default cycle: ten distinguishable colours
        _plot_run(loss, acc, name, records, x, colour)
    for ax, title in ((loss, "loss"), (acc, "accuracy")):
        ax.set(title=title, xlabel=x)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    acc.yaxis.set_major_formatter(PercentFormatter(1.0))
    loss.legend(loc="upper right", fontsize="small")  # the runs, by colour
    styles = [Line2D([], [], color="0.3", linestyle=s, label=k) for k, s in STYLES.items()]
    styles.append(Line2D([], [], color="0.3", marker="*", markersize=10, linestyle="", label="test"))
    acc.legend(handles=styles, loc="lower right", fontsize="small")  # the line styles
    return fig


def _plot_run(loss: Axes, acc: Axes, name: str, records: list[dict[str, Any]], x: str, colour: str) -> None:
    epochs = [r for r in records if "train_loss" in r]
    final = records[-1] if "test_acc" in records[-1] else None
    xs = [r[x] for r in epochs]
    label = name + (f" (test {final['test_acc']:.1%})" if final else "")
    for split, style in STYLES.items():
        line = {"linestyle": style, "marker": ".", "color": colour}  # a marker: one epoch is still seen
        loss.plot(xs, _values(epochs, f"{split}_loss"), **line, label=label if split == "train" else None)
        acc.plot(xs, _values(epochs, f"{split}_acc"), **line)
    if final:
        acc.plot([final[x]], [final["test_acc"]], "*", color=colour, markersize=12)
        loss.plot([final[x]], [final["test_loss"]], "*", color=colour, markersize=12)


def _values(records: list[dict[str, Any]], key: str) -> list[float]:
    # A missing value (no validation split, an older record) is a gap in the line, not a zero.
    return [math.nan if r.get(key) is None else r[key] for r in records]


def image_type(url: str) -> str:
    """The image type an output file's suffix names, or a UserError."""
    name = url.rpartition("/")[2]
    suffix = name.rpartition(".")[2].lower() if "." in name else ""
    if suffix not in IMAGE_TYPES:
        raise UserError(f"-o {url}: name an image file ending in {', '.join('.' + t for t in IMAGE_TYPES)}")
    return suffix


def save(fig: Figure, url: str) -> None:
    """Write `fig` to `url` (a path or URL) in the image type its suffix names."""
    from matplotlib import rc_context

    kind = image_type(url)
    buffer = io.BytesIO()
    # The same curves, the same bytes: no creation date in an SVG or a PDF, and the SVG's element
    # ids hashed with a fixed salt (matplotlib salts them with a random one by default).
    with rc_context({"svg.hashsalt": "runner"}):
        fig.savefig(buffer, format=kind, dpi=100, metadata=NO_DATES.get(kind))
    storage.write_output(url, buffer.getvalue())


def plot_runs(run_dirs: Sequence[RunDir], url: str, x: str = "epoch") -> None:
    """Read every run's metrics, draw them together, write the image to `url`."""
    image_type(url)  # a bad file name fails before any run is read
    save(figure([read_curves(r) for r in run_dirs], x), url)
