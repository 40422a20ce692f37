"""The Typer application, and the one place that turns errors into exit codes.

Exit codes (errors.Exit): 0 done, 1 failure, 2 bad input (one line on stderr, no
traceback), 3 diverged, 75 a distributed job lost a peer, 130 a second Ctrl-C, 143
stopped by a signal after a checkpoint. Command modules register on `app` with `command`.

Help texts (docstrings, `help=`) are plain text, shown as written: the app renders help
without rich markup, which would read "[image]" as a style tag and drop it.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from runner import __version__, outcomes
from runner.errors import ENDINGS, Exit

app = typer.Typer(
    name="runner",
    help="Run PyTorch training jobs from TOML specs: locally, resumably, on Kubernetes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,  # help texts as written (Click's plain help), not parsed as rich markup
)


def exit_codes(command: Callable[..., Any]) -> Callable[..., Any]:
    """Expected failures become one line on stderr and the contract's exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            result = _mapped(command, *args, **kwargs)
        except typer.Exit as e:
            outcomes.record(e.exit_code)  # for the launcher, if torchrun started this process
            if e.exit_code == Exit.PEER_LOST and "TORCHELASTIC_RUN_ID" in os.environ:
                _exit_now(Exit.PEER_LOST)  # a torchrun worker whose process group is broken
            raise
        except BaseException:
            outcomes.record(Exit.FAILED)
            raise
        outcomes.record(Exit.OK)
        return result

    return wrapper


def _exit_now(code: int) -> None:
    """End this process with `code` at once, its output flushed: a worker whose peer is gone
    sometimes died of SIGABRT in the interpreter's teardown instead ("terminate called without
    an active exception", a thread of the broken gloo group; seen in CI), which torch reported
    as "failed (exitcode: -6)". All the run owed is done by then: status, save, recorded code."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _mapped(command: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return command(*args, **kwargs)
    except tuple(kind for kind, _, _ in ENDINGS) as e:
        code, word = next((code, word) for kind, code, word in ENDINGS if isinstance(e, kind))
        typer.echo(f"{word}: {e}", err=True)
        raise typer.Exit(code) from None
    except KeyboardInterrupt:
        # On the way out with 130: yet another Ctrl-C must not turn that into death by SIGINT.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        typer.echo("aborted", err=True)
        raise typer.Exit(Exit.ABORTED) from None


def command(name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a command on `app`, with the exit-code contract."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        # `runner --help` lists each command with its docstring's first paragraph, whole
        # (Click would cut it at the first sentence, or mid-sentence, to fit 80 columns).
        summary = " ".join(inspect.getdoc(fn).split("\n\n")[0].split()) if fn.__doc__ else None
        return app.command(name, short_help=summary)(exit_codes(fn))

    return register


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
