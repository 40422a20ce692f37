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
    backend: Backend = Backend.local,
    quiet: QuietOpt = False,
    fresh: FreshOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Submit a job to a backend (default: train on this machine). Resumes from its checkpoints."""
    from runner.backends import local
    from runner.spec import load_spec

    load_spec(spec, set_)  # bad input fails here, before anything starts
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


def main() -> None:
    app()
