"""How every command prints: JSON for scripts (`--json`), rich renderables or text for people."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from runner import strict_json


def to_json(data: Any) -> str:
    return strict_json.dumps(data, indent=2, sort_keys=True)


def console() -> Console:
    """A terminal's width on a terminal; elsewhere (a pipe, a file) output at its natural
    width instead of rich's default 80 columns, which would cut run names short."""
    terminal = Console()
    return terminal if terminal.is_terminal else Console(width=10_000)


def emit(as_json: bool, data: Any, view: Callable[[], Any]) -> None:
    """Print `data` as JSON, or else what `view()` makes of it: text, or a rich renderable."""
    if as_json:
        typer.echo(to_json(data))
        return
    shown = view()
    if isinstance(shown, str):
        typer.echo(shown)
    else:
        console().print(shown)


def warn(message: str) -> None:
    typer.echo(f"warning: {message}", err=True)


def note(message: str) -> None:
    """A line for the person, on stderr: it never mixes into output a script reads."""
    typer.echo(message, err=True)
