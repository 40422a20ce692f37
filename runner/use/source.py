"""Which run's model a command uses: the one place a RUN argument is resolved.

RUN is a run directory, or a job's promoted/ folder (`gs://b/jobs/cnn/promoted`), which
stands for the promoted model: the run its newest promotion record names, checked against
the weights that were promoted. `predict`, `export`, `eval` (and a server) call
`open_model_run`. No torch here: a bad RUN fails before torch loads.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from runner import storage
from runner.errors import UserError
from runner.rundir.layout import RunDir, open_run, prefix_of
from runner.rundir.promotions import PROMOTED, Promotions, is_promotions_url


def open_model_run(ref: str, note: Callable[[str], None]) -> RunDir:
    """The run directory `ref` names: itself, or for a promoted/ folder the promoted run (`note`
    hears which, for stderr). A one-line UserError if there is none, or its weights changed."""
    if not is_promotions_url(ref):
        try:
            return open_run(ref)
        except UserError as e:
            if _holds_promotions(ref):
                raise UserError(f"{e}; for the job's promoted model, name {storage.join(ref, PROMOTED)}") from None
            raise
    storage.check_reachable(ref, "RUN")
    book = Promotions(prefix_of(ref) or ref)
    _, promotion = book.newest()
    if promotion is None:
        raise UserError(
            f"{ref}: nothing promoted there (no promotion record); promote a run with `runner promote RUN`, "
            "or train with [promote] enabled = true"
        )
    if (changed := book.weights_changed(promotion)) is not None:
        raise UserError(f"{ref}: the promoted model can no longer be used: {changed}; promote a run again")
    run_dir = open_run(book.run_dir(promotion).url)
    when = datetime.fromtimestamp(promotion.time, UTC).strftime("%Y-%m-%d %H:%M UTC")
    note(f"{ref}: the promoted model is {run_dir.url} (promoted {when}: {promotion.reason})")
    return run_dir


def _holds_promotions(url: str) -> bool:
    try:
        return PROMOTED in storage.list_names(url)
    except OSError:
        return False
