"""What a run starts from: its own newest checkpoint, another run's weights, or nothing.

Claiming the run directory and restoring its newest valid checkpoint are one step:
a writer claims on top of the commit record it read, so two attempts cannot both
believe they own the directory.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from typing import TYPE_CHECKING

from runner import storage
from runner.data.fingerprint import Fingerprint, changes, same_classes
from runner.errors import RunFailed, UserError
from runner.mounts import fuse_type
from runner.rundir.layout import FINAL_WEIGHTS, RunDir, newest_finished_sibling
from runner.spec import resume_conflicts

if TYPE_CHECKING:
    from runner.rundir.checkpoints import Entry
    from runner.rundir.writer import CheckpointWriter
    from runner.spec import JobSpec
    from runner.training.engine import Trainer

CLAIM_TRIES = 5
Say = Callable[[str], None]


def start_over(run_dir: RunDir, overwrite: bool) -> None:
    """`--fresh`: refuse a directory that holds a run, unless `overwrite`, which deletes it."""
    if not run_dir.looks_like_a_run():
        return
    if not overwrite:
        raise UserError(
            f"--fresh: {run_dir.url} already holds a run; add --overwrite to delete it and start over, "
            "or set checkpoint.dir to a new place"
        )
    run_dir.delete_run()


def warm_start(trainer: Trainer, init_from: str, run_dir: RunDir, say: Say) -> None:
    """Load another run's final weights into the fresh model (optimizer and position start anew)."""
    if init_from == "promoted":
        source = _promoted(run_dir, say)
    else:
        source = newest_finished_sibling(run_dir.url) if init_from == "previous" else RunDir(init_from)
    if source is None:
        if init_from == "previous":
            say("init_from = previous: no finished run beside this one yet; starting from scratch")
        return
    try:
        weights, _ = source.read_final()
    except FileNotFoundError:
        raise UserError(
            f"init_from: {source.path(FINAL_WEIGHTS)} does not exist; name a finished run directory"
        ) from None
    try:
        trainer.state.model.load_state_dict(weights)
    except RuntimeError as e:
        raise UserError(
            f"init_from: the weights in {source.url} do not fit this model: {str(e).splitlines()[0]}"
        ) from None
    say(f"initialised from {source.path(FINAL_WEIGHTS)}")


def _promoted(run_dir: RunDir, say: Say) -> RunDir | None:
    """The run holding the promoted model of `run_dir`'s job, or None (said why): nothing promoted
    yet (the first run), or its weights are gone or changed since (a run directory started over)."""
    from runner.rundir.promotions import Promotions

    book = Promotions.beside(run_dir.url)
    if book is None:
        raise UserError(
            f"init_from = promoted: {run_dir.url} is at a bucket's root, with no job prefix holding promotions; "
            "put the job's runs in a folder (gs://BUCKET/jobs/NAME/RUN)"
        )
    _, promotion = book.newest()
    if promotion is None:
        say(f"init_from = promoted: nothing promoted under {book.prefix} yet; starting from scratch")
        return None
    if (changed := book.weights_changed(promotion)) is not None:
        # The gate at this run's end finds the same and promotes it over them: the loop heals.
        say(f"init_from = promoted: the promoted model can no longer be used ({changed}); starting from scratch")
        return None
    return book.run_dir(promotion)


def claim_and_resume(writer: CheckpointWriter, trainer: Trainer, spec: JobSpec, say: Say) -> Entry | None:
    """Become the run directory's writer and restore its newest valid checkpoint, if any.

    Returns the checkpoint restored (None: a new run). Raises UserError if the directory
    holds another job's checkpoints or none that can be used, RunFailed if other writers
    keep committing.
    """
    for _ in range(CLAIM_TRIES):
        committed = writer.refresh()
        found = writer.newest_valid(say)
        if committed and found is None:
            raise UserError(
                f"checkpoint.dir: none of the {len(committed)} committed checkpoints in {writer.dir} can be used "
                "(see above); start over with --fresh --overwrite"
            )
        if found is not None:
            conflicts = resume_conflicts(tomllib.loads(found[0]["spec"]), spec)
            if conflicts:
                raise UserError(
                    f"checkpoint.dir: {spec.checkpoint.dir} holds a checkpoint of a different job: "
                    f"{', '.join(conflicts)}; resume with the same values, choose another checkpoint.dir, "
                    "or start over with --fresh --overwrite"
                )
            check_data(found[0], trainer.fingerprint, found[1], spec, say)
            # Restored before the claim: a state this job cannot take fails before anything is
            # written, instead of after, where every retry would claim and fail again.
            _restore(trainer, found[0]["state"], found[1], spec)
        try:
            writer.claim(found[1].file if found else None)
        except storage.AlreadyExists:
            continue  # another writer committed meanwhile: read its newest, then claim again
        if found and storage.is_local(writer.dir) and (kind := fuse_type(writer.dir.removeprefix("file://"))):
            say(
                f"note: {writer.dir} is on a FUSE mount ({kind}): an earlier attempt writing through another "
                "mount of the same store is stopped only once that mount lists this claim (its directory cache)"
            )
        return found[1] if found else None
    raise RunFailed(f"could not claim {writer.dir}: another writer keeps committing to it")


def check_data(payload: dict, current: Fingerprint, entry: Entry, spec: JobSpec, say: Say) -> None:
    """Refuse to resume on data other than the checkpoint's (UserError naming what changed),
    unless data.accept_changes. Checkpoints from before runner recorded its data pass."""
    saved = payload.get("data")
    said = changes(Fingerprint.from_dict(saved), current) if saved else []
    if not said:
        return
    what = "; ".join(said)
    if not same_classes(Fingerprint.from_dict(saved), current):  # not even with accept_changes
        raise UserError(
            f"data.root: the classes changed since the checkpoint at step {entry.step} was saved: {what}; each output "
            "of the network is one class by its place among the sorted class names, so a run cannot go on with "
            "other classes (data.accept_changes covers images added, removed or changed within the same classes): "
            "put the class folders back, or start over with --fresh --overwrite"
        )
    if spec.data.accept_changes:
        say(f"data: changed since the checkpoint at step {entry.step} ({what}); resuming on it (data.accept_changes)")
        return
    raise UserError(
        f"data.root: the data changed since the checkpoint at step {entry.step} was saved: {what}; put back the "
        "data it trained on, resume on the new data with --set data.accept_changes=true, or start over with "
        "--fresh --overwrite"
    )


def _restore(trainer: Trainer, state: dict, entry: Entry, spec: JobSpec) -> None:
    try:
        trainer.restore(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(
            f"checkpoint.dir: the checkpoint at step {entry.step} in {spec.checkpoint.dir} does not load into "
            f"this job ({first}); resume with the values it was saved with, or start over with --fresh --overwrite"
        ) from None
