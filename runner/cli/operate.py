"""Commands that watch and steer runs: ls, status, logs, cancel."""

from __future__ import annotations

from typing import Annotated

import typer

from runner.cli.app import command
from runner.cli.options import Backend, BackendOpt, ContextOpt, JsonOpt, NamespaceOpt, RunArg
from runner.cli.output import emit


@command()
def ls(
    prefix: Annotated[
        str, typer.Argument(metavar="PREFIX", help="A directory or bucket prefix of run directories.")
    ] = "runs",
    json_: JsonOpt = False,
) -> None:
    """List the runs under PREFIX, with their state and progress."""
    from runner.cli import views
    from runner.rundir import summary
    from runner.rundir.layout import find_runs

    found = [summary.read(r) for r in find_runs(prefix)]
    emit(json_, found, lambda: views.runs_table(found) if found else f"no runs under {prefix}")


@command()
def status(
    run: RunArg,
    backend: BackendOpt = Backend.local,  # type: ignore[attr-defined]
    namespace: NamespaceOpt = "default",
    context: ContextOpt = "",
    json_: JsonOpt = False,
) -> None:
    """One run in detail: state, progress, last metrics, checkpoints (k8s: the Job and its pods)."""
    from runner.backends.registry import open_backend
    from runner.cli import views

    info = open_backend(backend.value, namespace, context).status(run)
    emit(json_, info, lambda: views.key_values(info) if backend.value == "k8s" else views.run_detail(info))


@command()
def logs(
    run: RunArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the run ends.")] = False,
    backend: BackendOpt = Backend.local,  # type: ignore[attr-defined]
    namespace: NamespaceOpt = "default",
    context: ContextOpt = "",
) -> None:
    """Print a run's log (local: its run directory's log.txt; k8s: its newest pod's)."""
    from runner.backends.registry import open_backend

    for line in open_backend(backend.value, namespace, context).logs(run, follow):
        typer.echo(line)


@command()
def cancel(
    run: RunArg,
    backend: BackendOpt = Backend.local,  # type: ignore[attr-defined]
    namespace: NamespaceOpt = "default",
    context: ContextOpt = "",
) -> None:
    """Stop a run: it saves a checkpoint and exits (k8s: also deletes what submit created)."""
    from runner.backends.registry import open_backend

    typer.echo(open_backend(backend.value, namespace, context).cancel(run))
