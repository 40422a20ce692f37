"""Commands that use what a run trained: plot, eval, predict, export.

Each opens the run directory first, before torch loads, so a bad RUN fails at once.
"""

from __future__ import annotations

from typing import Annotated

import typer

from runner.cli.app import command
from runner.cli.options import CheckpointOpt, JsonOpt, ModelRunArg, SetOpt, choices
from runner.cli.output import emit, note, warn
from runner.use.export import FORMATS

Split = choices("Split", ("test", "val"))
Invert = choices("Invert", ("auto", "yes", "no"))
PlotX = choices("PlotX", ("epoch", "step"))
ExportFormat = choices("ExportFormat", FORMATS)


@command()
def plot(
    runs: Annotated[list[str], typer.Argument(metavar="RUN...", help="Run directories, drawn together.")],
    output: Annotated[str, typer.Option("--output", "-o", metavar="FILE", help="The image: .png, .svg or .pdf.")],
    x: Annotated[PlotX, typer.Option("--x", help="The horizontal axis.")] = PlotX.epoch,  # type: ignore[valid-type,attr-defined]
) -> None:
    """Plot loss and accuracy against epoch from runs' metrics.jsonl, overlaid, to an image file."""
    from runner.rundir.layout import open_run
    from runner.use import plot as plots

    plots.plot_runs([open_run(r) for r in runs], output, x.value)
    typer.echo(f"wrote {output}: {', '.join(runs)}")


@command("eval")
def eval_(
    run: ModelRunArg,
    split: Annotated[Split, typer.Option("--split", help="The run's held-out samples to use.")] = Split.test,  # type: ignore[valid-type,attr-defined]
    checkpoint: CheckpointOpt = None,
    set_: SetOpt = [],
    json_: JsonOpt = False,
) -> None:
    """Accuracy, per-class accuracy and confusion matrix of a run's weights on its test (or val) split.

    --set may say where the data is now (data.root, data.download) or where to compute (device, threads).
    """
    from runner.cli import views
    from runner.use.source import open_model_run

    run_dir = open_model_run(run, note)
    from runner.use.evaluate import evaluate_run

    result = evaluate_run(run_dir, split.value, checkpoint, set_, warn)
    emit(json_, result.to_json(), lambda: views.evaluation_view(result))


@command()
def predict(
    run: ModelRunArg,
    images: Annotated[list[str], typer.Argument(metavar="IMAGE...", help="Image files (PNG, JPEG), any size.")],
    top: Annotated[int, typer.Option("--top", "-k", min=1, help="Classes shown per image.")] = 3,
    invert: Annotated[
        Invert,  # type: ignore[valid-type]
        typer.Option(
            "--invert",
            help="Invert the images' brightness. auto: when the model learnt light-on-dark images (MNIST and "
            "the like) and an image's border is light (dark ink on paper).",
        ),
    ] = Invert.auto,  # type: ignore[attr-defined]
    checkpoint: CheckpointOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Classify image files with a run's model and preprocessing: the top classes, with probabilities."""
    from runner.cli import views
    from runner.use.source import open_model_run

    run_dir = open_model_run(run, note)
    from runner.use.predict import predict as classify
    from runner.use.trained import load_trained

    trained = load_trained(run_dir, checkpoint, warn)
    predictions = classify(trained, images, top, invert.value)
    data = {"weights": trained.source, "predictions": [p.to_json() for p in predictions]}
    emit(json_, data, lambda: views.predictions_text(trained, predictions))


@command()
def export(
    run: ModelRunArg,
    fmt: Annotated[
        ExportFormat,  # type: ignore[valid-type]
        typer.Option(
            "--format",
            "-f",
            help="safetensors: the weights and their metadata; torchscript, onnx: the model with its "
            "normalisation (float pixels 0-255 in, logits out).",
        ),
    ],
    output: Annotated[str, typer.Option("--output", "-o", metavar="FILE", help="Where to write it: a path or URL.")],
    checkpoint: CheckpointOpt = None,
) -> None:
    """Write a run's trained model in a form other programs load."""
    from runner.use.source import open_model_run

    run_dir = open_model_run(run, note)
    from runner.use import export as exports
    from runner.use.trained import load_trained

    trained = load_trained(run_dir, checkpoint, warn)
    size = exports.export(trained, fmt.value, output)
    typer.echo(f"wrote {output} ({fmt.value}, {size / 1e6:.1f} MB) from {trained.source}")
