"""The promotion gate: promote a finished run only if it beats its job's promoted model.

Both models are scored by the caller's `score` on the same samples: the candidate run's own
held-out split, each model behind its own preprocessing, in fp32 (use.evaluate). `decide`
is the rule, pure; `gate` reads the promotion records (rundir.promotions), scores, and
writes the next record create-only. A gate that loses the race for a record number reads
the winner and compares again, so each number has one winner and a model never replaces a
better one. Called at the end of training (rank 0, after the final weights are written)
and by `runner promote`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from runner.errors import RunFailed, UserError
from runner.rundir.layout import FINAL_WEIGHTS, RunDir
from runner.rundir.promotions import Promotion, Promotions, weights_identity
from runner.storage import AlreadyExists
from runner.use.trained import Trained, load_trained

Score = Callable[[Trained], float]  # a model's metric on the candidate's held-out samples, 0..1
TRIES = 5  # promotions landing while this gate compares: each is compared with in turn


@dataclass(frozen=True)
class Decision:
    """What the gate decided for `run`, and why; `previous` is the run that was promoted then."""

    promoted: bool
    run: str
    metric: str
    value: float | None
    previous: str | None
    previous_value: float | None
    min_improvement: float
    reason: str

    def line(self) -> str:
        return f"{'promoted' if self.promoted else 'not promoted'}: {self.reason}"

    def to_json(self) -> dict:
        return asdict(self)


def decide(metric: str, value: float, previous: str, previous_value: float, min_improvement: float) -> tuple[bool, str]:
    """Whether `value` beats `previous_value` by more than `min_improvement` (absolute, both 0..1),
    and the comparison in words, both numbers and the margin. Strictly more: an equal model
    (margin 0) is not promoted, so a retraining that changed nothing changes nothing."""
    delta = value - previous_value
    better = delta > min_improvement
    return better, (
        f"{metric} {value:.4f} vs {previous_value:.4f} of the promoted {previous}: {delta:+.4f}, "
        f"{'above' if better else 'not above'} the margin {min_improvement:.4f} (promote.min_improvement)"
    )


def gate(
    run_dir: RunDir,
    metric: str,
    min_improvement: float,
    score: Score,
    say: Callable[[str], None],
    force: bool = False,
    by: str = "gate",
    step: int | None = None,
    candidate: Trained | None = None,
) -> Decision:
    """Promote the finished run `run_dir` if it beats the promoted model of its prefix by more
    than `min_improvement` on `metric` (or, `force`, without comparing). `step`: its final step
    (default: its final metrics record's); `candidate`: its model, if loaded already. UserError
    if it cannot be promoted at all (no final
    weights, no prefix); RunFailed if promotions keep landing."""
    book = Promotions.beside(run_dir.url)
    if book is None:
        raise UserError(
            f"{run_dir.url}: a run directory at a bucket's root has no job prefix to be promoted in; "
            "put a job's runs in a folder (gs://BUCKET/jobs/NAME/RUN)"
        )
    name = run_dir.url.rstrip("/").rpartition("/")[2]
    try:
        size, md5 = weights_identity(run_dir.path(FINAL_WEIGHTS))
    except FileNotFoundError:
        raise UserError(f"{run_dir.url}: no {FINAL_WEIGHTS}; only a finished run can be promoted") from None
    candidate = candidate or load_trained(run_dir)
    value = None if force else score(candidate)
    if step is None:
        final = [r for r in run_dir.read_metrics() if "test_acc" in r]
        step = final[-1].get("step") if final else None
    scored: dict[tuple[str, str], float | tuple[bool, str]] = {}  # (run, md5) -> _score_previous's answer
    for _ in range(TRIES):
        seq, current = book.newest()
        promoted, reason, previous_value = _judge(book, current, name, md5, candidate, value, metric,
                                                  min_improvement, score, force, scored)  # fmt: skip
        decision = Decision(
            promoted, run_dir.url, metric, value, current and book.run_dir(current).url, previous_value,
            min_improvement, reason,
        )  # fmt: skip
        already = current is not None and (current.run, current.weights_md5) == (name, md5)
        if already or not promoted:
            return decision
        record = Promotion(name, step, size, md5, "" if force else metric, value, current and current.run,
                           previous_value, min_improvement, reason, by, time.time())  # fmt: skip
        try:
            book.commit(seq + 1, record)
        except AlreadyExists:
            say(f"another run was promoted while this gate compared (record {seq + 1}); comparing with it")
            continue
        return decision
    raise RunFailed(f"could not promote {run_dir.url}: {TRIES} other promotions landed while it compared; retry")


def _judge(
    book: Promotions,
    current: Promotion | None,
    name: str,
    md5: str,
    candidate: Trained,
    value: float | None,
    metric: str,
    min_improvement: float,
    score: Score,
    force: bool,
    scored: dict[tuple[str, str], float | tuple[bool, str]],
) -> tuple[bool, str, float | None]:
    """(promote?, why, the promoted model's metric if measured) against the `current` promotion."""
    if current is None:
        return True, f"the first promotion under {book.prefix}", None
    previous = book.run_dir(current).url
    if current.run == name and current.weights_md5 == md5:  # a retried run, or promoted by hand: no new record
        return True, f"{previous} is the promoted model already", current.value
    if force:
        return True, f"promoted by hand over {previous}, not compared (--force)", None
    key = (current.run, current.weights_md5)
    if key not in scored:
        scored[key] = _score_previous(book, current, candidate, score)
    found = scored[key]
    if isinstance(found, tuple):  # not measured: whether to promote all the same, and why
        return *found, None
    assert value is not None
    promote, reason = decide(metric, value, previous, found, min_improvement)
    return promote, reason, found


def _score_previous(book: Promotions, current: Promotion, candidate: Trained, score: Score) -> float | tuple[bool, str]:
    """The promoted model's metric; or, when it cannot be measured, whether to promote all the
    same and why: yes if its weights are gone or unusable (any usable model is better), no if
    it is another kind of model (other inputs or classes: not comparable; promote by hand)."""
    previous = book.run_dir(current)
    changed = book.weights_changed(current)
    if changed is not None:
        return True, f"the promoted model can no longer be used: {changed}"
    try:
        trained = load_trained(previous)
    except UserError as e:
        return True, f"the promoted model ({previous.url}) can no longer be used: {e}"
    mine, theirs = candidate.preprocessing, trained.preprocessing
    if (mine.input_shape, mine.classes) != (theirs.input_shape, theirs.classes):
        return False, (
            f"the promoted model ({previous.url}) takes {theirs.input_shape} inputs into classes {list(theirs.classes)}, "
            f"this one {mine.input_shape} into {list(mine.classes)}: not comparable; to replace it anyway, "
            "runner promote RUN --force"
        )
    return score(trained)


def promote_by_hand(run_dir: RunDir, force: bool, say: Callable[[str], None]) -> Decision:
    """`runner promote RUN`: the gate with the run's own [promote] metric and margin, scored on
    its own held-out samples (rebuilt from its spec, as `eval` does); `force`: not compared."""
    from runner.use.evaluate import device_for, evaluate, held_out, run_spec

    spec = run_spec(run_dir)
    split = "test" if spec.promote.metric == "test_acc" else "val"
    # The candidate first: its samples are checked against the data it recorded, as eval does.
    candidate = None if force else load_trained(run_dir)
    samples = None if force else held_out(spec, split, "promote.metric", candidate, say)

    def score(trained: Trained) -> float:
        assert samples is not None
        return evaluate(trained, samples.x, samples.y, split, device_for(spec)).accuracy

    return gate(
        run_dir, spec.promote.metric, spec.promote.min_improvement, score, say, force, by="hand", candidate=candidate
    )
