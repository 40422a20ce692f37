"""`runner eval` and `runner predict` on real runs: finished, resumed, SIGKILLed (no final
weights: a checkpoint's are used) and in the GCS emulator's bucket.

The runs are trained once per session by the real `runner run` (see `trained_runs`,
which tests/test_export.py and tests/test_plot.py share).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from runner.cli import views
from runner.errors import UserError
from runner.rundir.layout import open_run
from runner.use import images
from runner.use.evaluate import evaluate_run
from runner.use.predict import predict
from runner.use.trained import load_trained
from tests.conftest import STEPS_PER_EPOCH
from tests.helpers import runner_cli, upload


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def runs(trained_runs: dict[str, Path]) -> dict[str, Path]:
    return trained_runs


def test_classifier_normalises_exactly_as_the_engine_trains(runs: dict[str, Path]) -> None:
    from runner.spec import load_spec
    from runner.training.session import build_trainer

    trainer = build_trainer(load_spec(str(runs["finished"] / "spec.toml")))
    trained = load_trained(open_run(str(runs["finished"])))
    x = trainer.test.x
    assert torch.equal(trained.model.normalise(x), trainer._inputs(x))  # bitwise, every test image


# -- eval ------------------------------------------------------------------------------------------


def test_eval_of_final_weights_gives_the_runs_own_test_and_val_numbers(runs: dict[str, Path]) -> None:
    for name in ("finished", "resumed"):
        *epochs, final = metrics(runs[name])
        test = evaluate_run(open_run(str(runs[name])), "test")
        assert test.weights == f"final weights ({runs[name]}/final/model.safetensors)"
        assert test.accuracy == final["test_acc"] and test.samples == 359
        assert test.loss == pytest.approx(final["test_loss"], rel=1e-5)
        val = evaluate_run(open_run(str(runs[name])), "val")
        assert val.accuracy == epochs[-1]["val_acc"] and val.samples == 144
        assert sum(n for _, n, _ in val.per_class()) == 144
        assert [k for _, _, k in val.per_class()] == [val.confusion[i][i] for i in range(10)]


def test_eval_of_a_killed_run_uses_its_checkpoint_and_says_so(runs: dict[str, Path]) -> None:
    killed = evaluate_run(open_run(str(runs["killed"])), "val")
    assert killed.weights.startswith(f"checkpoint at step {STEPS_PER_EPOCH} (")
    assert killed.weights.endswith("the run has no final weights yet")
    assert killed.accuracy == metrics(runs["killed"])[0]["val_acc"]
    # Same spec and seed: epoch 1's weights are the same in every run of it.
    finished = evaluate_run(open_run(str(runs["finished"])), "val")
    assert killed.confusion == finished.confusion
    # --checkpoint picks an older one of a resumed run: the weights it was resumed from.
    older = evaluate_run(open_run(str(runs["resumed"])), "val", checkpoint=str(STEPS_PER_EPOCH))
    assert older.confusion == finished.confusion and older.weights.startswith(f"checkpoint at step {STEPS_PER_EPOCH}")


def test_eval_refuses_a_checkpoint_that_is_not_there_and_overrides_that_change_the_split(
    runs: dict[str, Path],
) -> None:
    run_dir = open_run(str(runs["resumed"]))
    with pytest.raises(UserError, match=r"--checkpoint 7: .* no checkpoint at that step; it has: latest, 82, 41"):
        evaluate_run(run_dir, checkpoint="7")
    with pytest.raises(UserError, match=r"--set: seed \(0 -> 1\) would evaluate something other"):
        evaluate_run(run_dir, overrides=["seed=1"])
    with pytest.raises(UserError, match=r"--set data.val_fraction=2: data.val_fraction: Input should be less than 1"):
        evaluate_run(run_dir, overrides=["data.val_fraction=2"])
    moved = evaluate_run(run_dir, overrides=["data.root=/elsewhere", "data.download=false"])
    assert moved.accuracy == metrics(runs["resumed"])[-1]["test_acc"]


def test_eval_of_runs_in_a_bucket(runs: dict[str, Path], bucket: str) -> None:
    for name in ("finished", "killed"):
        local = evaluate_run(open_run(str(runs[name])), "test")
        remote = evaluate_run(open_run(upload(runs[name], f"{bucket}/runs/{name}")), "test")
        assert remote.confusion == local.confusion
        assert remote.weights.replace(f"{bucket}/runs", str(runs[name].parent)) == local.weights


def test_eval_command_prints_accuracy_per_class_and_the_confusion_matrix(runs: dict[str, Path]) -> None:
    result = runner_cli("eval", str(runs["finished"]), cwd=runs["finished"].parent)
    assert result.returncode == 0, result.stderr
    test_acc = metrics(runs["finished"])[-1]["test_acc"]
    assert f"weights: final weights ({runs['finished']}/final/model.safetensors)" in result.stdout
    assert f"test split: 359 samples, accuracy {test_acc:.2%}" in result.stdout
    assert "class  samples  correct  accuracy" in result.stdout
    assert "confusion matrix (rows: true class, columns: predicted)" in result.stdout
    killed = evaluate_run(open_run(str(runs["killed"])), "val")
    report = json.loads(json.dumps(killed.to_json()))  # what --json prints
    assert report["accuracy"] == metrics(runs["killed"])[0]["val_acc"] and report["split"] == "val"
    assert report["weights"].startswith(f"checkpoint at step {STEPS_PER_EPOCH}")
    assert len(report["confusion"]) == 10 and set(report["per_class"]) == {str(d) for d in range(10)}


# -- predict -----------------------------------------------------------------------------------------


def _digits(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` test digits of the runs' split, as the model sees them: uint8 (n, 1, 28, 28)."""
    from runner.data.datasets import load_dataset

    test = load_dataset("digits", "data", False, 0.1, 0).test
    return test.x[:n], test.y[:n]


def test_predict_feeds_an_image_of_the_models_size_exactly_as_the_data(runs: dict[str, Path], tmp_path: Path) -> None:
    trained = load_trained(open_run(str(runs["finished"])))
    x, _ = _digits(8)
    grey, paper = [], []
    for i, digit in enumerate(x[:, 0].numpy()):
        grey.append(tmp_path / f"grey-{i}.png")
        Image.fromarray(digit).save(grey[-1])  # light on dark, like the data
        paper.append(tmp_path / f"paper-{i}.png")  # dark on light, in colour, with an alpha channel
        Image.fromarray(np.stack([255 - digit] * 3 + [np.full_like(digit, 255)], axis=-1)).save(paper[-1])
    for path in grey + paper:
        pixels, inverted = images.to_pixels(
            images.read_image(str(path)), (1, 28, 28), "auto", trained.preprocessing.light_on_dark
        )
        assert inverted == path.name.startswith("paper")
        assert torch.equal(pixels, x[int(path.stem.split("-")[1])])
    expected = torch.softmax(trained.model(x), 1).argmax(1).tolist()
    for paths in (grey, paper):
        predictions = predict(trained, [str(p) for p in paths], top=3)
        assert [trained.classes.index(p.top[0][0]) for p in predictions] == expected
        assert all(len(p.top) == 3 and p.top[0][1] >= p.top[1][1] >= p.top[2][1] for p in predictions)


def _photos(tmp_path: Path, n: int) -> tuple[list[str], list[str]]:
    """Test digits as a phone would photograph ink on paper: large, colour, JPEG or PNG."""
    x, y = _digits(n)
    paths = []
    for i, digit in enumerate(x[:, 0].numpy()):
        big = np.asarray(Image.fromarray(255 - digit).resize((140, 140), Image.Resampling.BILINEAR), dtype=float)
        paper = np.stack([big * 0.95, big * 0.92, big * 0.85], axis=-1).astype(np.uint8)  # warm paper, grey ink
        paths.append(str(tmp_path / f"photo-{i}.{'jpg' if i % 2 else 'png'}"))
        Image.fromarray(paper).save(paths[-1])
    return paths, [str(int(label)) for label in y]


def test_predict_command_classifies_photos_of_ink_on_paper(runs: dict[str, Path], tmp_path: Path) -> None:
    images, labels = _photos(tmp_path, 20)
    result = runner_cli("predict", str(runs["resumed"]), *images, "--top", "2", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["weights"] == f"final weights ({runs['resumed']}/final/model.safetensors)"
    predictions = report["predictions"]
    assert [p["image"] for p in predictions] == images and all(p["inverted"] for p in predictions)
    assert all(len(p["top"]) == 2 and 0 <= p["top"][1]["probability"] <= p["top"][0]["probability"] <= 1
               for p in predictions)  # fmt: skip
    right = sum(p["top"][0]["class"] == label for p, label in zip(predictions, labels, strict=True))
    assert right >= 15, right  # about 89% accurate on the data
    trained = load_trained(open_run(str(runs["resumed"])))
    not_inverted = predict(trained, images, invert="no")
    assert not any(p.inverted for p in not_inverted)
    assert sum(p.top[0][0] == label for p, label in zip(not_inverted, labels, strict=True)) < right - 5

    lines = views.predictions_text(trained, not_inverted[:2]).splitlines()  # what the command prints
    assert lines[0] == f"weights: final weights ({runs['resumed']}/final/model.safetensors)"
    assert lines[1].startswith(f"{images[0]}   ") and len(lines[1].split()) == 1 + 2 * 3


def test_predict_frames_a_small_digit_on_a_big_page_as_the_data_frame_theirs(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    """Test digits written small in a corner of a page: framed as the digits data were (the ink in
    a centred 20x20 box, the run's Preprocessing.framing), read about as well as the data; fitted
    whole into 28x28 (a digit a few pixels high, off-centre), barely at all."""
    from runner.use.predict import probabilities

    trained = load_trained(open_run(str(runs["resumed"])))
    assert trained.preprocessing.framing == "mnist"
    x, y = _digits(20)
    paths = []
    for i, digit in enumerate(x[:, 0].numpy()):
        page = Image.new("L", (400, 300), 250)
        page.paste(Image.fromarray(255 - digit).resize((84, 84), Image.Resampling.BILINEAR), (30 + 7 * i, 20))
        paths.append(str(tmp_path / f"small-{i}.png"))
        page.save(paths[-1])
    labels = [str(int(label)) for label in y]
    framed = predict(trained, paths)
    right = sum(p.top[0][0] == label for p, label in zip(framed, labels, strict=True))
    assert right >= 15, right
    fitted = torch.stack([images.to_pixels(images.read_image(p), (1, 28, 28), "auto", True, "fit")[0] for p in paths])
    wrong_frame = [trained.classes[i] for i in probabilities(trained, fitted).argmax(1).tolist()]
    assert sum(c == label for c, label in zip(wrong_frame, labels, strict=True)) < right - 5


def test_predict_with_a_killed_runs_checkpoint_and_a_bucket_runs_weights(
    runs: dict[str, Path], tmp_path: Path, bucket: str
) -> None:
    images, _ = _photos(tmp_path, 4)
    killed = load_trained(open_run(str(runs["killed"])))
    assert killed.source.startswith(f"checkpoint at step {STEPS_PER_EPOCH}")
    finished = load_trained(open_run(str(runs["finished"])))
    assert predict(killed, images) == predict(finished, images)  # the same weights
    remote = load_trained(open_run(upload(runs["resumed"], f"{bucket}/runs/resumed")))
    assert remote.source == f"final weights ({bucket}/runs/resumed/final/model.safetensors)"
    local = load_trained(open_run(str(runs["resumed"])))
    assert predict(remote, images, top=10) == predict(local, images, top=10)


def test_predict_odd_images(runs: dict[str, Path], tmp_path: Path) -> None:
    trained = load_trained(open_run(str(runs["finished"])))
    wide = tmp_path / "wide.png"  # 4:1, grey with alpha, transparent ground: letterboxed onto white
    Image.new("LA", (400, 100), (0, 0)).save(wide)
    tall = tmp_path / "tall.jpg"
    Image.new("RGB", (30, 90), (20, 20, 20)).save(tall)
    for path, inverted in ((wide, True), (tall, False)):
        pixels, was_inverted = images.to_pixels(images.read_image(str(path)), (1, 28, 28), "auto", True)
        assert pixels.shape == (1, 28, 28) and pixels.dtype == torch.uint8 and was_inverted == inverted
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(UserError, match=r"notes.png: cannot use it: not an image \(PNG, JPEG, ...\)"):
        predict(trained, [str(wide), str(tmp_path / "notes.png")])
    with pytest.raises(UserError, match=r"missing.png: no such file"):
        images.read_image(str(tmp_path / "missing.png"))
    with pytest.raises(UserError, match=r"a directory, not an image file"):
        images.read_image(str(tmp_path))


def test_predict_command_rejects_a_file_that_is_not_an_image(runs: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "digit.png").write_bytes(b"\x89PNG but truncated")
    result = runner_cli("predict", str(runs["finished"]), "digit.png", cwd=tmp_path)
    assert (
        result.returncode == 2 and result.stderr == "error: digit.png: cannot use it: not an image (PNG, JPEG, ...)\n"
    )
