"""`runner <command> --help` shows every help text as it is written in the code.

The expectations come from the command definitions themselves (the docstrings and every
parameter's `help=`), so a command or help string added later is checked too.
"""

from __future__ import annotations

import inspect
import re

import pytest
import typer
from typer.testing import CliRunner

from runner.cli.main import app
from runner.errors import ENDINGS, FAIL_AT_ONCE, RETRY_FREE, Exit
from tests.helpers import REPO

ROOT = typer.main.get_command(app)
COMMANDS = sorted(ROOT.commands)  # type: ignore[attr-defined]
BRACKETED = re.compile(r"\[[^\[\]]*\]")


def help_texts(command) -> list[str]:
    """What the code says about a command: its docstring (or help=) and each parameter's help."""
    return [text for text in (command.help, *(getattr(p, "help", None) for p in command.params)) if text]


def flat(text: str) -> str:
    """Whitespace collapsed: help is re-wrapped to the terminal's width."""
    return " ".join(text.split())


def shown_help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert result.exit_code == 0, result.output
    return flat(result.output)


def test_the_help_texts_hold_bracketed_words_to_check() -> None:
    # Not vacuous: `--image`'s help names the spec's [image] table.
    assert "[image]" in BRACKETED.findall(" ".join(help_texts(ROOT.commands["render"])))  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["", *COMMANDS], ids=lambda n: n or "runner")
def test_help_shows_each_help_text_as_written(name: str) -> None:
    """Mutation: rich markup (Typer's default when rich is installed) drops "[image]" from
    submit's, render's and schedule's help."""
    command = ROOT.commands[name] if name else ROOT  # type: ignore[attr-defined]
    shown = shown_help(*([name] if name else []))
    texts = help_texts(command)
    assert texts, f"runner {name} has no help text"
    for text in texts:
        for word in BRACKETED.findall(text):
            assert flat(word) in shown, f"runner {name} --help lost {word!r} of {text!r}:\n{shown}"
        assert flat(text) in shown, f"runner {name} --help does not show {text!r} as written:\n{shown}"


def test_the_command_list_shows_each_docstring_first_paragraph_whole() -> None:
    """Mutation: without the short_help that cli/app.py's `command` sets, Click cuts the
    summaries at the first sentence or mid-sentence ("under the spec's...")."""
    shown = shown_help()
    for name, command in ROOT.commands.items():  # type: ignore[attr-defined]
        summary = flat(inspect.cleandoc(command.help).split("\n\n")[0])
        assert f"{name} {summary}" in shown, f"runner --help cuts {name}'s summary {summary!r}:\n{shown}"


def test_the_readmes_exit_codes_are_the_table_in_errors() -> None:
    # The contract, pinned once: every code runner exits with is in the README's table, and
    # no other; the codes a retry cannot change and the ones retried for free are as documented.
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("### Exit codes") :].split("\n\n")[1]
    documented = {int(row.split("|")[1]) for row in table.splitlines()[2:]}
    assert documented == {int(code) for code in Exit}
    assert (set(FAIL_AT_ONCE), set(RETRY_FREE)) == ({2, 3}, {75, 143})
    assert {code for _, code, _ in ENDINGS} == {Exit.BAD_INPUT, Exit.PEER_LOST, Exit.DIVERGED, Exit.FAILED}
