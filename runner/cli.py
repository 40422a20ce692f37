"""The `runner` command: thin Typer commands that parse, call one thing, and print.

Exit codes: 0 done, 1 failure, 2 bad input (one line on stderr, no traceback).
torch is imported only by the commands that train.
"""

from __future__ import annotations

import atexit
import functools
import gc
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.console import Console

from runner import __version__
from runner.errors import RunFailed, UserError

app = typer.Typer(
    name="runner",
    help="Run PyTorch training jobs from TOML specs: locally, resumably, on Kubernetes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

SpecArg = Annotated[str, typer.Argument(metavar="SPEC", help="The job spec, a TOML file (e.g. jobs/digits.toml).")]
SetOpt = Annotated[
    list[str],
    typer.Option(
        "--set",
        "-s",
        metavar="KEY=VALUE",
        help="Override a spec key, dotted for tables: --set epochs=3 --set data.root=/data",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar: one plain line per epoch.")]
FreshOpt = Annotated[bool, typer.Option("--fresh", help="Start over instead of resuming from checkpoint.dir.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="With --fresh: delete what checkpoint.dir holds.")]


class Backend(StrEnum):
    local = "local"
    k8s = "k8s"


BackendOpt = Annotated[Backend, typer.Option("--backend", "-b", help="Where the job runs.")]
NamespaceOpt = Annotated[str, typer.Option("--namespace", "-n", help="Kubernetes namespace (k8s backend).")]
ContextOpt = Annotated[str, typer.Option("--context", help="kubeconfig context (k8s backend; default: current).")]
ImageOpt = Annotated[str, typer.Option("--image", help="Image to run (default: [image] repository, content tag).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _exit_codes(command: Callable[..., Any]) -> Callable[..., Any]:
    """Expected failures become one line on stderr and the contract's exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        except RunFailed as e:
            typer.echo(f"failed: {e}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("aborted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _command(fn: Callable[..., Any]) -> Callable[..., Any]:
    return app.command()(_exit_codes(fn))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"runner {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    pass


@_command
def submit(
    spec: SpecArg,
    set_: SetOpt = [],
    backend: BackendOpt = Backend.local,
    quiet: QuietOpt = False,
    fresh: FreshOpt = False,
    overwrite: OverwriteOpt = False,
    namespace: NamespaceOpt = "default",
    context: ContextOpt = "",
    image: ImageOpt = "",
) -> None:
    """Submit a job to a backend (default: train on this machine). Resumes from its checkpoints."""
    from runner.backends import Submission
    from runner.spec import load_spec

    resolved = load_spec(spec, set_)  # bad input fails here, before anything starts
    if backend is Backend.k8s and (fresh or overwrite):
        raise UserError("--fresh/--overwrite act on local run directories; for a cluster, set a new checkpoint.dir")
    flags = [f for f, on in (("--quiet", quiet), ("--fresh", fresh), ("--overwrite", overwrite)) if on]
    job = Submission(spec, tuple(set_), resolved, tuple(flags), image)
    code = _backend(backend, namespace, context).submit(job)
    if backend is Backend.k8s:
        _submitted(resolved, namespace)
    raise typer.Exit(code)


@_command
def run(
    spec: SpecArg,
    set_: SetOpt = [],
    quiet: QuietOpt = False,
    fresh: FreshOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Train a job in this process (what a container runs). Resumes from its checkpoints.

    Exits 143 after saving a checkpoint when stopped by SIGTERM or SIGINT.
    """
    from runner import job
    from runner.spec import load_spec

    # This process ends when the job does. Freezing what exists then spares the exit a
    # last garbage collection over the ~400,000 objects torch brings: 0.6 s off every
    # exit, the one after an emergency checkpoint included (a grace period is short).
    atexit.register(gc.freeze)
    if overwrite and not fresh:
        raise UserError("--overwrite only goes with --fresh")
    raise typer.Exit(job.run(load_spec(spec, set_), Console(soft_wrap=True), quiet, fresh, overwrite))


@_command
def validate(
    spec: SpecArg,
    set_: SetOpt = [],
    show: Annotated[bool, typer.Option("--show", help="Print the resolved spec as TOML.")] = False,
) -> None:
    """Check a spec without running it."""
    from runner.spec import load_spec, to_toml

    resolved = load_spec(spec, set_)
    typer.echo(
        to_toml(resolved)
        if show
        else f"ok: {spec} ({resolved.model} on {resolved.data.dataset}, run dir {resolved.checkpoint.dir})"
    )


class Builder(StrEnum):
    docker = "docker"
    podman = "podman"
    buildah = "buildah"


@_command
def build(
    spec: SpecArg,
    set_: SetOpt = [],
    push: Annotated[bool, typer.Option("--push", help="Push the image after building it.")] = False,
    builder: Annotated[Builder, typer.Option("--builder", help="The tool that builds the image.")] = Builder.docker,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the commands instead of running them.")] = False,
) -> None:
    """Build the job's image, tagged by content, under the spec's image.repository."""
    import shlex

    from runner import image as images
    from runner.spec import load_spec

    resolved = load_spec(spec, set_)
    ref = images.reference(resolved.image)
    commands = images.build_commands(ref, resolved.image, builder.value, push)
    if dry_run:
        typer.echo("\n".join(shlex.join(c) for c in commands))
        return
    images.run_commands(commands, images.source_root())  # type: ignore[arg-type]
    typer.echo(ref)


@_command
def render(
    spec: SpecArg,
    set_: SetOpt = [],
    schedule: Annotated[
        str, typer.Option("--schedule", metavar="CRON", help='Render a CronJob on this schedule, e.g. "0 3 * * *".')
    ] = "",
    image: Annotated[
        str, typer.Option("--image", help="Image to run (default: [image] repository, content tag).")
    ] = "",
) -> None:
    """Print the Kubernetes objects `submit --backend k8s` would create, as YAML."""
    from runner import image as images
    from runner import manifests
    from runner.spec import load_spec, to_toml

    resolved = load_spec(spec, [*set_, *([f"schedule.cron={schedule}"] if schedule else [])])
    objects = manifests.render(resolved, to_toml(resolved), image or images.reference(resolved.image))
    typer.echo(manifests.to_yaml(objects), nl=False)


@_command
def schedule(
    spec: SpecArg,
    cron: Annotated[str, typer.Option("--cron", metavar="CRON", help='When to retrain, e.g. "0 3 * * *".')],
    set_: SetOpt = [],
    namespace: NamespaceOpt = "default",
    context: ContextOpt = "",
    image: ImageOpt = "",
) -> None:
    """Re-run a job on a schedule: a Kubernetes CronJob, each run in its own run directory."""
    from runner.backends import Submission
    from runner.spec import load_spec

    overrides = (*set_, f"schedule.cron={cron}")
    resolved = load_spec(spec, overrides)
    _backend(Backend.k8s, namespace, context).submit(Submission(spec, overrides, resolved, image=image))
    _submitted(resolved, namespace)


RunArg = Annotated[
    str, typer.Argument(metavar="RUN", help="A run directory, local or a URL (k8s backend: a job name).")
]


@_command
def ls(
    prefix: Annotated[
        str, typer.Argument(metavar="PREFIX", help="A directory or bucket prefix of run directories.")
    ] = "runs",
    json_: JsonOpt = False,
) -> None:
    """List the runs under PREFIX, with their state and progress."""
    from runner import runs, views

    found = [runs.read(r) for r in runs.find(prefix)]
    if json_:
        typer.echo(views.to_json(found))
    elif not found:
        typer.echo(f"no runs under {prefix}")
    else:
        _table_console().print(views.runs_table(found))


@_command
def status(
    run: RunArg,
    backend: BackendOpt = Backend.local,
    namespace: NamespaceOpt = "default",
    context: ContextOpt = "",
    json_: JsonOpt = False,
) -> None:
    """One run in detail: state, progress, last metrics, checkpoints (k8s: the Job and its pods)."""
    from runner import views

    info = _backend(backend, namespace, context).status(run)
    if json_:
        typer.echo(views.to_json(info))
    elif backend is Backend.k8s:
        typer.echo(views.key_values(info))
    else:
        _table_console().print(views.run_detail(info))


@_command
def logs(
    run: RunArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the run ends.")] = False,
    backend: BackendOpt = Backend.local,
    namespace: NamespaceOpt = "default",
    context: ContextOpt = "",
) -> None:
    """Print a run's log (local: its run directory's log.txt; k8s: its newest pod's)."""
    for line in _backend(backend, namespace, context).logs(run, follow):
        typer.echo(line)


@_command
def cancel(
    run: RunArg,
    backend: BackendOpt = Backend.local,
    namespace: NamespaceOpt = "default",
    context: ContextOpt = "",
) -> None:
    """Stop a run: it saves a checkpoint and exits (k8s: also deletes what submit created)."""
    typer.echo(_backend(backend, namespace, context).cancel(run))


# -- using what a run trained: plot, eval, predict, export ----------------------------------------

RunDirArg = Annotated[str, typer.Argument(metavar="RUN", help="A run directory: a path or URL (gs://bucket/runs/x).")]
CheckpointOpt = Annotated[
    str | None,
    typer.Option(
        "--checkpoint",
        "-c",
        metavar="latest|STEP",
        help="Use a checkpoint's weights (default: the final ones; the newest checkpoint's if there are none yet).",
    ),
]


class Split(StrEnum):
    test = "test"
    val = "val"


class Invert(StrEnum):
    auto = "auto"
    yes = "yes"
    no = "no"


class ExportFormat(StrEnum):
    safetensors = "safetensors"
    torchscript = "torchscript"
    onnx = "onnx"


class PlotX(StrEnum):
    epoch = "epoch"
    step = "step"


FormatOpt = Annotated[
    ExportFormat,
    typer.Option(
        "--format",
        "-f",
        help="safetensors: the weights and their metadata; torchscript, onnx: the model with its normalisation "
        "(float pixels 0-255 in, logits out).",
    ),
]


def _warn(message: str) -> None:
    typer.echo(f"warning: {message}", err=True)


@_command
def plot(
    runs: Annotated[list[str], typer.Argument(metavar="RUN...", help="Run directories, drawn together.")],
    output: Annotated[str, typer.Option("--output", "-o", metavar="FILE", help="The image: .png, .svg or .pdf.")],
    x: Annotated[PlotX, typer.Option("--x", help="The horizontal axis.")] = PlotX.epoch,
) -> None:
    """Plot loss and accuracy against epoch from runs' metrics.jsonl, overlaid, to an image file."""
    from runner import plot as plots
    from runner.rundir import open_run

    plots.plot_runs([open_run(r) for r in runs], output, x.value)
    typer.echo(f"wrote {output}: {', '.join(runs)}")


@app.command("eval")
@_exit_codes
def eval_(
    run: RunDirArg,
    split: Annotated[Split, typer.Option("--split", help="The run's held-out samples to use.")] = Split.test,
    checkpoint: CheckpointOpt = None,
    set_: SetOpt = [],
    json_: JsonOpt = False,
) -> None:
    """Accuracy, per-class accuracy and confusion matrix of a run's weights on its test (or val) split.

    --set may say where the data is now (data.root, data.download) or where to compute (device, threads).
    """
    from runner import views
    from runner.rundir import open_run

    run_dir = open_run(run)  # before torch loads: a bad RUN fails at once
    from runner import inference

    result = inference.evaluate_run(run_dir, split.value, checkpoint, set_, _warn)
    if json_:
        typer.echo(views.to_json(result.to_json()))
    else:
        Console(soft_wrap=True).print(views.evaluation_view(result))


@_command
def predict(
    run: RunDirArg,
    images: Annotated[list[str], typer.Argument(metavar="IMAGE...", help="Image files (PNG, JPEG), any size.")],
    top: Annotated[int, typer.Option("--top", "-k", min=1, help="Classes shown per image.")] = 3,
    invert: Annotated[
        Invert,
        typer.Option(
            "--invert",
            help="Invert the images' brightness. auto: when the model learnt light-on-dark images (MNIST and "
            "the like) and an image's border is light (dark ink on paper).",
        ),
    ] = Invert.auto,
    checkpoint: CheckpointOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Classify image files with a run's model and preprocessing: the top classes, with probabilities."""
    from runner import views
    from runner.rundir import open_run

    run_dir = open_run(run)
    from runner import inference

    trained = inference.load_trained(run_dir, checkpoint, _warn)
    predictions = inference.predict(trained, images, top, invert.value)
    if json_:
        typer.echo(views.to_json({"weights": trained.source, "predictions": [p.to_json() for p in predictions]}))
    else:
        typer.echo(views.predictions_text(trained, predictions))


@_command
def export(
    run: RunDirArg,
    fmt: FormatOpt,
    output: Annotated[str, typer.Option("--output", "-o", metavar="FILE", help="Where to write it: a path or URL.")],
    checkpoint: CheckpointOpt = None,
) -> None:
    """Write a run's trained model in a form other programs load."""
    from runner.rundir import open_run

    run_dir = open_run(run)
    from runner import export as exports
    from runner import inference

    trained = inference.load_trained(run_dir, checkpoint, _warn)
    size = exports.export(trained, fmt.value, output)
    typer.echo(f"wrote {output} ({fmt.value}, {size / 1e6:.1f} MB) from {trained.source}")


def _table_console() -> Console:
    """A terminal's width on a terminal; elsewhere (a pipe, a file) tables at their natural
    width instead of rich's default 80 columns, which would cut run names short."""
    console = Console()
    return console if console.is_terminal else Console(width=10_000)


def _backend(backend: Backend, namespace: str, context: str) -> Any:
    if backend is Backend.k8s:
        from runner.backends.k8s import K8sBackend, connect

        return K8sBackend(connect(context or None), namespace)
    from runner.backends.local import LocalBackend

    return LocalBackend()


def _submitted(spec: Any, namespace: str) -> None:
    kind = "cronjob" if spec.schedule.cron else "job"
    typer.echo(
        f"submitted {kind} {spec.name} to namespace {namespace}; "
        f"follow it: runner logs {spec.name} -f --backend k8s -n {namespace}"
    )


def main() -> None:
    app()
