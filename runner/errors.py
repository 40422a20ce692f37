"""The one error type the CLI maps to exit code 2 (bad input)."""


class UserError(Exception):
    """Input the user can fix: a spec, an override, a CLI argument, a missing file.

    The message is shown as one line, without a traceback, so it must say what is
    wrong and how to fix it.
    """


class RunFailed(Exception):
    """A failure we can explain in one line (exit code 1): no traceback, the reason."""
