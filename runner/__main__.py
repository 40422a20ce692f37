"""`python -m runner`: the CLI. torchrun starts each of its workers this way too."""

import os
import sys

if "TORCHELASTIC_RUN_ID" in os.environ:
    # A worker of torchrun's elastic agent, which starts it in a session of its own: bound to
    # the agent first thing, so a killed agent leaves no worker training (child.py says why).
    from runner.backends.child import stop_with_parent

    stop_with_parent(os.getppid())
from runner.training.signals import stop_while_starting  # noqa: E402

stop_while_starting(sys.argv)  # before the imports below, which take a second or two
from runner.cli.main import main  # noqa: E402

main()
