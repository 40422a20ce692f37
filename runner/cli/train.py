"""Commands that train or ship a job: submit, run, launch, validate, build, render, schedule, notebook."""

from __future__ import annotations

import atexit
import gc
from typing import Annotated, Any

import typer

from runner.backends.image import BUILDERS
from runner.cli.app import command
from runner.cli.options import (
    Backend,
    BackendOpt,
    ContextOpt,
    FreshOpt,
    ImageOpt,
    NamespaceOpt,
    OverwriteOpt,
    QuietOpt,
    SetOpt,
    SpecArg,
    choices,
)
from runner.errors import UserError
from runner.training.signals import ignore_stop_signals

Builder = choices("Builder", BUILDERS)


@command()
def submit(
    spec: SpecArg,
    set_: SetOpt = [],
    backend: BackendOpt = Backend.local,  # type: ignore[attr-defined]
    quiet: QuietOpt = False,
    fresh: FreshOpt = False,
    overwrite: OverwriteOpt = False,
    namespace: NamespaceOpt = "default",
    context: ContextOpt = "",
    image: ImageOpt = "",
) -> None:
    """Submit a job to a backend (default: train on this machine). Resumes from its checkpoints."""
    from runner.backends.api import Submission
    from runner.backends.registry import open_backend
    from runner.spec import load_spec

    resolved = load_spec(spec, set_)  # bad input fails here, before anything starts
    k8s = backend.value == "k8s"
    if k8s and (fresh or overwrite):
        raise UserError("--fresh/--overwrite act on local run directories; for a cluster, set a new checkpoint.dir")
    job = Submission(spec, tuple(set_), resolved, quiet=quiet, fresh=fresh, overwrite=overwrite, image=image)
    code = open_backend(backend.value, namespace, context).submit(job)
    ignore_stop_signals()
    if k8s:
        _submitted(resolved, namespace)
    raise typer.Exit(code)


@command()
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
    from runner.spec import load_spec
    from runner.training import session
    from runner.training.progress import RunConsole

    # This process ends when the job does. Freezing what exists then spares the exit a
    # last garbage collection over the ~400,000 objects torch brings: 0.6 s off every
    # exit, the one after an emergency checkpoint included (a grace period is short).
    atexit.register(gc.freeze)
    if overwrite and not fresh:
        raise UserError("--overwrite only goes with --fresh")
    code = session.run(load_spec(spec, set_), RunConsole(soft_wrap=True), quiet, fresh, overwrite)
    ignore_stop_signals()  # one more Ctrl-C must not turn the exit code into death by SIGINT
    raise typer.Exit(code)


@command()
def launch(
    spec: SpecArg,
    set_: SetOpt = [],
    node_rank: Annotated[
        int,
        typer.Option(
            "--node-rank", envvar="JOB_COMPLETION_INDEX", min=0, help="This node's index; node 0 hosts the rendezvous."
        ),
    ] = 0,
    rdzv_endpoint: Annotated[
        str,
        typer.Option(
            "--rdzv-endpoint", envvar="RUNNER_RDZV_ENDPOINT", metavar="HOST:PORT", help="Node 0's rendezvous address."
        ),
    ] = "",
    run_id: Annotated[
        str, typer.Option("--run-id", envvar="RUNNER_RUN_ID", help="Names the rendezvous (default: the job's name).")
    ] = "",
    quiet: QuietOpt = False,
    fresh: FreshOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Run this node's processes of a distributed job through torchrun (what each pod of one runs).

    Exits as `runner run` does: 0, 1, 2 (bad input, before any process starts), 3, 143,
    and 75 when a peer was lost (the group re-forms and resumes from the last checkpoint).
    """
    from runner.backends import torchrun
    from runner.backends.api import Submission
    from runner.backends.local import run_args
    from runner.spec import load_spec

    resolved = load_spec(spec, set_)  # bad input fails here, before any process group starts
    res = resolved.resources
    try:
        node = torchrun.Node(res.nodes, res.procs, node_rank, rdzv_endpoint, run_id or resolved.name)
    except ValueError as e:
        raise UserError(f"{e}; give --node-rank and --rdzv-endpoint (resources.nodes = {res.nodes})") from None
    job = Submission(spec, tuple(set_), resolved, quiet=quiet, fresh=fresh, overwrite=overwrite)
    code = torchrun.launch(run_args(job), node, res.grace_seconds)
    ignore_stop_signals()
    raise typer.Exit(code)


@command()
def validate(
    spec: SpecArg,
    set_: SetOpt = [],
    show: Annotated[bool, typer.Option("--show", help="Print the resolved spec as TOML.")] = False,
) -> None:
    """Check a spec without running it."""
    from runner.backends.manifests import check_names
    from runner.models.user import is_user_model
    from runner.spec import load_spec, to_toml

    resolved = load_spec(spec, set_)
    check_names(resolved)  # names Kubernetes would refuse for the objects this spec makes (a CronJob if scheduled)
    if is_user_model(resolved.model):
        # Your own model is built once on the data's shape: import errors, a factory that raises or
        # returns no nn.Module, fail here. Only then is torch imported (built-in models stay fast).
        from runner.data.datasets import DATASETS
        from runner.models.registry import build_model

        info, options = DATASETS[resolved.data.dataset], resolved.data.options()
        # Your own files' shape is the spec's; their classes are counted when the data loads,
        # so here the factory is tried with 2 (run start builds it again with the real count).
        shape = (options.channels, *options.image_size) if options.image_size else info.shape
        try:
            build_model(resolved.model, resolved.model_options, shape, info.num_classes or 2, resolved.code)
        except UserError as e:
            raise UserError(f"{spec}: {e}") from None  # the file, as for every other spec error
    typer.echo(
        to_toml(resolved)
        if show
        else f"ok: {spec} ({resolved.model} on {resolved.data.dataset}, run dir {resolved.checkpoint.dir})"
    )


@command()
def build(
    spec: SpecArg,
    set_: SetOpt = [],
    push: Annotated[bool, typer.Option("--push", help="Push the image after building it.")] = False,
    builder: Annotated[
        Builder, typer.Option("--builder", help="The tool that builds the image.")  # type: ignore[valid-type]
    ] = Builder[BUILDERS[0]],  # type: ignore[misc]
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the commands instead of running them.")] = False,
) -> None:
    """Build the job's image, tagged by content, under the spec's image.repository.

    The image holds runner and the spec's code (your model's files and packages).
    """
    import shlex
    import tempfile
    from pathlib import Path

    from runner.backends import image as images
    from runner.spec import load_spec

    resolved = load_spec(spec, set_)
    files = images.build_context(resolved.code)
    ref = f"{resolved.image.repository}:{images.content_tag(files, resolved.image)}"
    commands = images.build_commands(ref, resolved.image, builder.value, push)
    if dry_run:
        typer.echo("\n".join([*images.describe(files, resolved.code), *(shlex.join(c) for c in commands)]))
        return
    with tempfile.TemporaryDirectory(prefix="runner-build-") as context:
        images.stage(files, Path(context))
        images.run_commands(commands, Path(context))
    typer.echo(ref)


@command()
def render(
    spec: SpecArg,
    set_: SetOpt = [],
    schedule: Annotated[
        str, typer.Option("--schedule", metavar="CRON", help='Render a CronJob on this schedule, e.g. "0 3 * * *".')
    ] = "",
    image: ImageOpt = "",
    jobset: Annotated[
        bool, typer.Option("--jobset", help="Render a JobSet (restarts all nodes together) instead of a Job.")
    ] = False,
    serve: Annotated[
        bool,
        typer.Option("--serve", help="Render what serves the job's trained model instead: a Deployment and a Service."),
    ] = False,
    replicas: Annotated[int, typer.Option("--replicas", min=1, help="With --serve: how many servers.")] = 2,
) -> None:
    """Print the Kubernetes objects `submit --backend k8s` would create, as YAML; with --serve, those
    that serve the job's model (runner serve on its checkpoint.dir)."""
    from runner.backends import image as images
    from runner.backends import manifests
    from runner.spec import load_spec, to_toml

    resolved = load_spec(spec, [*set_, *([f"schedule.cron={schedule}"] if schedule else [])])
    ref = image or images.reference(resolved.image, resolved.code)
    if serve:
        from runner.backends import serving

        if schedule or jobset:
            raise UserError("--serve renders a Deployment and a Service; drop --schedule and --jobset")
        objects = serving.render_serving(resolved, ref, serving.ServeOptions(replicas))
    else:
        objects = manifests.render(resolved, to_toml(images.in_image(resolved)), ref, jobset)
    typer.echo(manifests.to_yaml(objects), nl=False)


@command()
def schedule(
    spec: SpecArg,
    cron: Annotated[str, typer.Option("--cron", metavar="CRON", help='When to retrain, e.g. "0 3 * * *".')],
    set_: SetOpt = [],
    namespace: NamespaceOpt = "default",
    context: ContextOpt = "",
    image: ImageOpt = "",
) -> None:
    """Re-run a job on a schedule: a Kubernetes CronJob, each run in its own run directory."""
    from runner.backends.api import Submission
    from runner.backends.registry import open_backend
    from runner.spec import load_spec

    overrides = (*set_, f"schedule.cron={cron}")
    resolved = load_spec(spec, overrides)
    open_backend("k8s", namespace, context).submit(Submission(spec, overrides, resolved, image=image))
    _submitted(resolved, namespace)


@command()
def notebook(
    spec: SpecArg,
    set_: SetOpt = [],
    output: Annotated[str, typer.Option("-o", "--output", metavar="FILE.ipynb", help="The notebook to write.")] = "",
    checkpoints: Annotated[
        str,
        typer.Option(
            "--checkpoints", metavar="drive|gs://BUCKET/PREFIX|PATH", help="Where the notebook keeps run directories."
        ),
    ] = "drive",
    install: Annotated[
        str, typer.Option("--install", metavar="PIP-SOURCE", help="What the notebook pip-installs runner from.")
    ] = "",
) -> None:
    """Write the job as a Colab notebook that resumes after a disconnect (the spec embedded)."""
    from pathlib import Path

    from runner import storage
    from runner.backends import notebook as notebooks
    from runner.models.user import code_files
    from runner.spec import load_spec
    from runner.training.checkpointer import save_every_seconds

    if not output.endswith(".ipynb"):
        raise UserError(f"-o {output or '(missing)'}: name the notebook to write, ending in .ipynb")
    resolved = load_spec(spec, set_)  # bad input fails here, before anything is written
    ckpt = resolved.checkpoint
    every = save_every_seconds(ckpt.every_seconds, "every_seconds" in ckpt.model_fields_set, colab=True)
    text = Path(spec).read_text()  # as the user wrote it: unset keys keep their defaults (Colab's save interval)
    code = notebooks.embedded_code(code_files(resolved.code))  # Colab has only what the notebook holds
    entries = [Path(c).name for c in resolved.code]
    nb = notebooks.render(
        text, resolved.name, checkpoints, install or notebooks.UNPUBLISHED, list(set_), every, code, entries
    )
    storage.write_output(output, notebooks.to_json(nb).encode())
    typer.echo(f"wrote {output}: upload it to Colab and run all cells; after a disconnect, run them again to resume")


def _submitted(spec: Any, namespace: str) -> None:
    kind = "cronjob" if spec.schedule.cron else "job"
    typer.echo(
        f"submitted {kind} {spec.name} to namespace {namespace}; "
        f"follow it: runner logs {spec.name} -f --backend k8s -n {namespace}"
    )
