"""The promotion gate's rule, its records, and the gate on real run directories (local
files, models built untrained, scores given): what decides, not what trains. The gate at the
end of real training, on the GCS emulator, is tests/e2e/test_promote.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.data.datasets import DATASETS
from runner.errors import UserError
from runner.models.registry import build_model
from runner.rundir.checkpoints import seal
from runner.rundir.layout import RunDir, prefix_of, weights_metadata
from runner.rundir.promotions import Promotion, Promotions, is_promotions_url
from runner.spec import load_spec, resume_conflicts
from runner.storage import AlreadyExists
from runner.use.gate import decide, gate
from runner.use.source import open_model_run
from tests.helpers import JOBS

DIGITS = DATASETS["digits"].preprocessing


def finished_run(url: str, seed: int, classes: tuple[str, ...] = DIGITS.classes) -> RunDir:
    """A run directory holding final weights (an untrained MLP, distinct per seed) and a spec."""
    import torch

    torch.manual_seed(seed)
    pre = DIGITS if classes == DIGITS.classes else type(DIGITS)(**{**DIGITS.__dict__, "classes": classes})
    net = build_model("mlp", {"hidden": [8]}, pre.input_shape, len(pre.classes))
    run = RunDir(url)
    run.write_final(net.state_dict(), weights_metadata("mlp", {"hidden": [8]}, "digits", pre))
    run.write_spec((JOBS / "digits.toml").read_text())
    return run


def scores(values: dict[str, float]):  # noqa: ANN201 - a use.gate.Score
    """A score by run name (the weights' path names it): the gate's logic, without evaluating."""
    return lambda trained: next(v for name, v in values.items() if f"/{name}/" in trained.source)


def promoted_run(prefix: str) -> str | None:
    _, promotion = Promotions(prefix).newest()
    return promotion and promotion.run


# -- the rule ------------------------------------------------------------------------------------


def test_promoted_only_when_better_by_more_than_the_margin() -> None:
    assert decide("test_acc", 0.95, "a", 0.93, 0.01)[0]
    assert not decide("test_acc", 0.935, "a", 0.93, 0.01)[0]  # better, but not by the margin
    assert not decide("test_acc", 0.93, "a", 0.93, 0.0)[0]  # equal: a retraining that changed nothing
    assert not decide("test_acc", 0.5, "a", 0.93, 0.0)[0]


def test_the_reason_gives_both_numbers_and_the_margin() -> None:
    _, reason = decide("val_acc", 0.8123, "gs://b/jobs/cnn/run-1", 0.9345, 0.005)
    assert reason == (
        "val_acc 0.8123 vs 0.9345 of the promoted gs://b/jobs/cnn/run-1: -0.1222, not above the margin 0.0050 "
        "(promote.min_improvement)"
    )


# -- the spec ------------------------------------------------------------------------------------


def test_promote_is_off_by_default_and_its_keys_are_checked() -> None:
    spec = load_spec(str(JOBS / "digits.toml"))
    assert (spec.promote.enabled, spec.promote.metric, spec.promote.min_improvement) == (False, "test_acc", 0.0)
    with pytest.raises(
        UserError, match=r"--set promote.metrc=val_acc: promote.metrc: unknown key \(did you mean 'metric'"
    ):
        load_spec(str(JOBS / "digits.toml"), ["promote.metrc=val_acc"])
    with pytest.raises(UserError, match="promote.min_improvement"):
        load_spec(str(JOBS / "digits.toml"), ["promote.min_improvement=-0.1"])
    with pytest.raises(UserError, match=r"needs validation samples, but data.val_fraction = 0"):
        load_spec(str(JOBS / "digits.toml"), ["promote.enabled=true", "promote.metric=val_acc", "data.val_fraction=0"])


def test_the_gate_settings_may_change_when_a_run_resumes() -> None:
    saved = load_spec(str(JOBS / "digits.toml")).model_dump(mode="json")
    changed = load_spec(str(JOBS / "digits.toml"), ["promote.enabled=true", "promote.min_improvement=0.01"])
    assert resume_conflicts(saved, changed) == []


# -- the records -----------------------------------------------------------------------------------


def record(run: str, value: float = 0.9) -> Promotion:
    return Promotion(run, 10, 100, "0" * 32, "test_acc", value, None, None, 0.0, "test", "gate", 0.0)


def test_a_record_number_is_taken_once(tmp_path: Path) -> None:
    book = Promotions(str(tmp_path))
    book.commit(1, record("run-1"))
    with pytest.raises(AlreadyExists):
        book.commit(1, record("run-2"))
    assert book.newest() == (1, record("run-1"))


def test_the_newest_record_that_verifies_wins(tmp_path: Path) -> None:
    book = Promotions(str(tmp_path))
    book.commit(1, record("run-1"))
    book.commit(2, record("run-2"))
    folder = tmp_path / "promoted"
    whole = (folder / "0000000002.json").read_bytes()
    (folder / "0000000003.json").write_bytes(whole[: len(whole) // 2])  # cut off by a kill (FUSE)
    tampered = json.loads(whole) | {"run": "run-9"}  # edited by hand: its seal no longer matches
    (folder / "0000000004.json").write_text(json.dumps(tampered))
    (folder / "0000000005.json").write_text(json.dumps(seal({"something": "else"})))  # another shape
    (folder / ".tmp-abc-0000000006.json").write_text("{")  # a local write's temporary file
    assert book.newest() == (5, record("run-2"))  # and the next record goes above 5


def test_a_record_cannot_be_sealed_over_its_own_md5_key() -> None:
    with pytest.raises(ValueError, match="md5"):
        seal({"md5": "abc"})


def test_the_promoted_folder_names_the_promoted_model() -> None:
    assert is_promotions_url("gs://b/jobs/cnn/promoted") and is_promotions_url("promoted/")
    assert not is_promotions_url("gs://b/jobs/cnn/run-1") and not is_promotions_url("gs://b/jobs/promoted-x")
    assert [prefix_of(u) for u in ("gs://b/jobs/cnn/r", "gs://b/r", "gs://b", "runs/r", "r", "/r")] == [
        "gs://b/jobs/cnn", "gs://b", None, "runs", ".", "/"
    ]  # fmt: skip


# -- the gate on run directories --------------------------------------------------------------------


def test_first_promotes_itself_worse_does_not_better_does(tmp_path: Path) -> None:
    prefix, said = str(tmp_path / "job"), []
    runs = {name: finished_run(f"{prefix}/{name}", seed) for seed, name in enumerate(["r1", "r2", "r3"])}
    score = scores({"r1": 0.80, "r2": 0.70, "r3": 0.86})
    first = gate(runs["r1"], "test_acc", 0.05, score, said.append)
    assert first.promoted and first.reason == f"the first promotion under {prefix}"
    worse = gate(runs["r2"], "test_acc", 0.05, score, said.append)
    assert not worse.promoted and (worse.value, worse.previous_value) == (0.70, 0.80)
    assert "0.7000 vs 0.8000" in worse.reason and "margin 0.0500" in worse.reason
    better = gate(runs["r3"], "test_acc", 0.05, score, said.append)
    assert better.promoted and better.previous == runs["r1"].url
    assert promoted_run(prefix) == "r3" and sorted(p.name for p in (tmp_path / "job/promoted").iterdir()) == [
        "0000000001.json", "0000000002.json"
    ]  # fmt: skip
    again = gate(runs["r3"], "test_acc", 0.0, score, said.append)  # a retried run's gate: no second record
    assert again.promoted and again.reason.endswith("is the promoted model already")
    assert Promotions(prefix).newest()[0] == 2
    assert said == []  # no race: nothing to say along the way


def test_by_hand_with_force_a_worse_run_is_promoted_without_comparing(tmp_path: Path) -> None:
    prefix = str(tmp_path / "job")
    good, bad = finished_run(f"{prefix}/good", 0), finished_run(f"{prefix}/bad", 1)
    gate(good, "test_acc", 0.0, scores({"good": 0.9}), print)
    forced = gate(bad, "test_acc", 0.0, scores({}), print, force=True, by="hand")  # scores nothing
    assert forced.promoted and "--force" in forced.reason and promoted_run(prefix) == "bad"
    assert Promotions(prefix).newest()[1].by == "hand"


def test_a_promoted_model_whose_weights_changed_is_replaced_and_not_served(tmp_path: Path) -> None:
    prefix = str(tmp_path / "job")
    old = finished_run(f"{prefix}/old", 0)
    gate(old, "test_acc", 0.0, scores({"old": 0.99}), print)
    finished_run(f"{prefix}/old", 7)  # the run directory started over: other weights, same place
    with pytest.raises(UserError, match=r"the promoted model can no longer be used: .*changed since it was promoted"):
        open_model_run(f"{prefix}/promoted", print)
    new = gate(finished_run(f"{prefix}/new", 1), "test_acc", 0.0, scores({"new": 0.5}), print)
    assert new.promoted and "can no longer be used" in new.reason
    notes = []
    assert open_model_run(f"{prefix}/promoted", notes.append).url == f"{prefix}/new"
    assert notes[0].startswith(f"{prefix}/promoted: the promoted model is {prefix}/new (promoted ")


def test_a_model_of_other_classes_is_not_compared_nor_promoted(tmp_path: Path) -> None:
    prefix = str(tmp_path / "job")
    gate(finished_run(f"{prefix}/digits", 0), "test_acc", 0.0, scores({"digits": 0.5}), print)
    letters = finished_run(f"{prefix}/letters", 1, classes=tuple("abcdefghij"))
    decision = gate(letters, "test_acc", 0.0, scores({"letters": 0.99}), print)
    assert not decision.promoted and "not comparable" in decision.reason and "--force" in decision.reason


def test_only_a_finished_run_in_a_folder_can_be_promoted(tmp_path: Path) -> None:
    unfinished = RunDir(str(tmp_path / "job" / "r1"))
    unfinished.write_spec("")
    with pytest.raises(UserError, match="no final/model.safetensors; only a finished run can be promoted"):
        gate(unfinished, "test_acc", 0.0, scores({}), print)
    with pytest.raises(UserError, match="at a bucket's root has no job prefix"):
        gate(RunDir("gs://bucket"), "test_acc", 0.0, scores({}), print)
    assert not (tmp_path / "job" / "promoted").exists()


def test_consumers_are_told_what_to_name(tmp_path: Path) -> None:
    prefix = str(tmp_path / "job")
    with pytest.raises(UserError, match="nothing promoted there"):
        open_model_run(f"{prefix}/promoted", print)
    gate(finished_run(f"{prefix}/r1", 0), "test_acc", 0.0, scores({"r1": 0.5}), print)
    with pytest.raises(
        UserError, match=f"not a run directory .*; for the job's promoted model, name {prefix}/promoted"
    ):
        open_model_run(prefix, print)
