"""The `runner` command: every command module registered on the one Typer app.

Commands are thin: parse, call one thing, print. torch is imported only by the
commands that train or use a model, and only once the input has been checked.
"""

from __future__ import annotations

import importlib
import sys

from runner.training.signals import stop_while_starting

stop_while_starting(sys.argv)  # `runner` as a console script: first thing, before the imports below

from runner.cli.app import app  # noqa: E402

# Importing a module registers its commands; `runner --help` lists them in this order.
COMMAND_MODULES = ("runner.cli.train", "runner.cli.operate", "runner.cli.use", "runner.cli.serving")
for _module in COMMAND_MODULES:
    importlib.import_module(_module)


def main() -> None:
    app()
