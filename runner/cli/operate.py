"""Commands that watch and steer runs: ls, status, logs, cancel, promote."""

from __future__ import annotations

from typing import Annotated

import typer

from runner.cli.app import command
from runner.cli.options import Backend, BackendOpt, ContextOpt, JsonOpt, NamespaceOpt, RunArg, RunDirArg
from runner.cli.output import emit, note


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

    runs = find_runs(prefix)
    promoted = summary.promoted_runs(runs)
    found = [{**summary.read(r), "promoted": r.url in promoted} for r in runs]
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


@command()
def promote(
    run: RunDirArg,
    force: Annotated[bool, typer.Option("--force", help="Promote it without comparing.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Make a finished run's model its job's promoted model, if it beats the promoted one.

    The job is the folder RUN is in. Both models are scored on RUN's own held-out samples with
    RUN's [promote] metric and min_improvement; --force promotes it regardless. Exits 0 either way.
    """
    from runner.rundir.layout import open_run

    run_dir = open_run(run)
    from runner.use.gate import promote_by_hand

    decision = promote_by_hand(run_dir, force, note)
    emit(json_, decision.to_json(), decision.line)
