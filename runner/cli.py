"""The `runner` command: thin Typer commands that parse, call one thing, and print.

Exit codes: 0 done, 1 failure, 2 bad input (one line on stderr, no traceback).
torch is imported only by the commands that train.
"""

from __future__ import annotations

import functools
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
    from runner.backends import local
    from runner.spec import load_spec

    resolved = load_spec(spec, set_)  # bad input fails here, before anything starts
    if backend is Backend.k8s:
        if fresh or overwrite:
            raise UserError("--fresh/--overwrite act on local run directories; for a cluster, set a new checkpoint.dir")
        _submit_k8s(resolved, namespace, context, image)
        return
    flags = [f for f, on in (("--quiet", quiet), ("--fresh", fresh), ("--overwrite", overwrite)) if on]
    raise typer.Exit(local.submit(spec, set_, flags))


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
    from runner.spec import load_spec

    _submit_k8s(load_spec(spec, [*set_, f"schedule.cron={cron}"]), namespace, context, image)


@_command
def status(
    run: Annotated[str, typer.Argument(metavar="RUN", help="A run directory (local) or a job name (k8s).")],
    backend: BackendOpt = Backend.local,
    namespace: NamespaceOpt = "default",
    context: ContextOpt = "",
    json_: JsonOpt = False,
) -> None:
    """Show where a run stands."""
    import json

    if backend is Backend.k8s:
        info = _k8s(namespace, context).status(run)
    else:
        from runner.backends import local

        info = local.status(run)
    if json_:
        typer.echo(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            typer.echo(f"{key:>12}: {value}")


@_command
def logs(
    run: Annotated[str, typer.Argument(metavar="RUN", help="A job name (k8s).")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the run ends.")] = False,
    backend: BackendOpt = Backend.k8s,
    namespace: NamespaceOpt = "default",
    context: ContextOpt = "",
) -> None:
    """Print a run's log (k8s: its newest pod's)."""
    if backend is not Backend.k8s:
        raise UserError("logs: a local run prints to the terminal that started it; logs of local runs come later")
    for line in _k8s(namespace, context).logs(run, follow):
        typer.echo(line)


@_command
def cancel(
    run: Annotated[str, typer.Argument(metavar="RUN", help="A job or cronjob name (k8s).")],
    backend: BackendOpt = Backend.k8s,
    namespace: NamespaceOpt = "default",
    context: ContextOpt = "",
) -> None:
    """Stop a run and delete what submit created (its checkpoints stay)."""
    if backend is not Backend.k8s:
        raise UserError("cancel: stop a local run with Ctrl-C (it saves a checkpoint first)")
    _k8s(namespace, context).cancel(run)
    typer.echo(f"cancelled {run} in namespace {namespace}")


def _k8s(namespace: str, context: str) -> Any:
    from runner.backends.k8s import K8sBackend, connect

    return K8sBackend(connect(context or None), namespace)


def _submit_k8s(resolved: Any, namespace: str, context: str, image: str) -> None:
    from runner import image as images
    from runner.spec import to_toml

    name = _k8s(namespace, context).submit(resolved, to_toml(resolved), image or images.reference(resolved.image))
    kind = "cronjob" if resolved.schedule.cron else "job"
    typer.echo(f"submitted {kind} {name} to namespace {namespace}; follow it: runner logs {name} -f -n {namespace}")


def main() -> None:
    app()
