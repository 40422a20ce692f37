"""Training on image files of the user's own (dataset = "imagefolder"), end to end: real
digits written as PNG and JPEG files of mixed sizes and modes (and two broken files), on
local disk and in the GCS emulator; killed and resumed bitwise; a changed folder refused
on resume (exit 2) unless accepted; remote files downloaded once, then only what is new."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import pytest

from runner import storage
from runner.rundir import summary
from runner.rundir.layout import RunDir
from tests.e2e.test_resume import final_weights, killed_at_random_moments
from tests.helpers import JOBS, runner_cli, same_tensors, upload
from tests.image_folders import write_digit_folder

# The resume tests' spec (jobs/digits.toml, 2 epochs, a checkpoint every 3 steps) on the files.
FOLDER = ("--set=data.dataset=imagefolder", "--set=data.image_size=16", "--set=data.channels=1")
SPEC = (
    "--set=device=cpu",
    "--set=threads=1",
    "--set=epochs=2",
    "--set=batch_size=32",
    "--set=checkpoint.every_steps=3",
)


def run(*args: str, cwd: Path):
    return runner_cli("run", str(JOBS / "digits.toml"), *SPEC, *FOLDER, *args, "--quiet", cwd=cwd)


def test_a_local_image_folder_trains_resumes_bitwise_and_refuses_a_renamed_class(tmp_path: Path) -> None:
    write_digit_folder(tmp_path / "images", per_class=20)
    root = f"--set=data.root={tmp_path / 'images'}"
    ref = run(root, "--set=checkpoint.dir=ref", cwd=tmp_path)
    assert ref.returncode == 0, ref.stdout + ref.stderr
    assert (
        "data: skipped 2 unreadable image(s) of 202: five/not-an-image.jpg (not an image), three/truncated.png"
        in ref.stdout
    )
    killed_at_random_moments(
        str(tmp_path / "killed"), tmp_path, random.Random(7), kills_wanted=1, extra=(*FOLDER, root)
    )
    assert same_tensors(final_weights(str(tmp_path / "killed")), final_weights(str(tmp_path / "ref")))

    status = summary.read(RunDir(str(tmp_path / "ref")))["data"]  # what `runner status --json` prints
    assert status["input_shape"] == [1, 16, 16] and status["classes"][7] == "three"  # sorted folder names
    assert status["fingerprint"]["samples"] == 202 and status["fingerprint"]["per_class"]["seven"][0] == 20

    # A class folder renamed under the run: refused, naming the change, with nothing written, even
    # with data.accept_changes (the outputs are classes by their place among the sorted names);
    # eval refuses it too.
    images, ref_dir = tmp_path / "images", tmp_path / "ref"
    (images / "seven").rename(images / "aseven")
    checkpoints = sorted((ref_dir / "checkpoints").iterdir())
    for accept in ([], ["--set=data.accept_changes=true"]):
        refused = run(root, "--set=checkpoint.dir=ref", "--set=epochs=3", *accept, cwd=tmp_path)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "classes changed" in refused.stderr and "renamed 'seven' -> 'aseven'" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
        assert sorted((ref_dir / "checkpoints").iterdir()) == checkpoints
    for command in ("eval", "promote"):  # both score the model on the folder as it is now
        scored = runner_cli(command, str(ref_dir), cwd=tmp_path)
        assert scored.returncode == 2 and "not the ones the model was trained on" in scored.stderr, scored.stderr
    assert not (tmp_path / "promoted").exists()

    # Images added to a class: refused without data.accept_changes, resumed with it.
    (images / "aseven").rename(images / "seven")
    for n in range(2):
        shutil.copyfile(images / "one" / "0000.png", images / "one" / f"extra-{n}.png")
    refused = run(root, "--set=checkpoint.dir=ref", "--set=epochs=3", cwd=tmp_path)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "class 'one': 20 -> 22 samples" in refused.stderr and "data.accept_changes=true" in refused.stderr
    accepted = run(root, "--set=checkpoint.dir=ref", "--set=epochs=3", "--set=data.accept_changes=true", cwd=tmp_path)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "resuming on it (data.accept_changes)" in accepted.stdout and "resumed from step" in accepted.stdout
    index = RunDir(str(ref_dir)).checkpoint_index()
    index.refresh()
    payload = index.newest_valid(print)[0]  # loaded with weights_only
    assert payload["preprocessing"]["classes"][0] == "eight" and payload["data"]["per_class"]["one"][0] == 22
    metadata = RunDir(str(ref_dir)).read_final()[1]
    assert json.loads(metadata["data_fingerprint"])["samples"] == 204

    # eval on data that changed since: figures on the data as it is, and a warning saying so.
    (images / "one" / "extra-0.png").unlink()
    evaluated = runner_cli("eval", str(ref_dir), cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "the data changed since the model was trained on it (class 'one': 22 -> 21 samples)" in evaluated.stderr


def test_a_bucket_image_folder_is_downloaded_once_then_only_new_files(bucket: str, tmp_path: Path) -> None:
    write_digit_folder(tmp_path / "images", per_class=20)
    root = upload(tmp_path / "images", f"{bucket}/images")
    where = (f"--set=data.root={root}", f"--set=data.cache={tmp_path / 'cache'}", "--set=epochs=1")
    first = run(*where, "--set=checkpoint.dir=first", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert re.search(r"data: 202 of 202 files downloaded \([\d.]+ kB\), none was cached in ", first.stdout)

    added = tmp_path / "more"
    write_digit_folder(added, per_class=22, corrupt=False)
    for path in sorted(added.rglob("*")):
        if path.is_file() and int(path.stem) >= 20:  # the two more of each class: 20 new files
            storage.write_bytes(f"{root}/{path.relative_to(added).as_posix()}", path.read_bytes())
    again = run(*where, "--set=checkpoint.dir=first", "--set=epochs=2", cwd=tmp_path)
    assert again.returncode == 2, again.stdout + again.stderr  # the run's data changed under it
    assert "data: 20 of 222 files downloaded" in again.stdout and "the rest cached" in again.stdout
    assert "class 'one': 20 -> 22 samples" in again.stderr


def test_a_data_root_in_a_bucket_that_does_not_exist_is_one_line_and_writes_nothing(
    bucket: str, tmp_path: Path
) -> None:
    missing = bucket.replace("gs://", "gs://no-") + "/images"
    result = run(
        f"--set=data.root={missing}", f"--set=data.cache={tmp_path / 'cache'}", "--set=checkpoint.dir=r", cwd=tmp_path
    )
    assert (result.returncode, result.stderr.count("\n")) == (2, 1), result.stderr
    assert f"data.root: bucket '{missing[5:].split('/')[0]}' of '{missing}' does not exist" in result.stderr
    assert not (tmp_path / "r").exists() and not (tmp_path / "cache").exists()


# (images per class, overrides, what the one line must say): a split that would come out empty.
EMPTY = {
    "test": (2, ["--set=data.test_fraction=0.02", "--set=data.val_fraction=0"],
             "data: the test split of images is empty (20 images, data.test_fraction 0.02): add images or raise "
             "data.test_fraction"),
    "validation": (2, ["--set=data.val_fraction=0.01"],
                   "data: the validation split of images is empty (16 training images, data.val_fraction 0.01): add "
                   "images, raise data.val_fraction, or set it to 0 to train without one"),
    "a class's training images": (1, ["--set=data.test_fraction=0.3", "--set=data.val_fraction=0"],
                                  "class(es) of images have no training image after the split: "),
}  # fmt: skip


@pytest.mark.parametrize("empty", EMPTY)
def test_a_split_that_comes_out_empty_is_refused_before_anything_is_written(tmp_path: Path, empty: str) -> None:
    per_class, sets, expected = EMPTY[empty]
    write_digit_folder(tmp_path / "images", per_class=per_class, corrupt=False)
    result = runner_cli(
        "submit", str(JOBS / "digits.toml"), *SPEC, *FOLDER, "--set=data.root=images", *sets, cwd=tmp_path
    )
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]  # no run directory, nothing else


def test_no_validation_split_asked_for_is_null_in_the_metrics(tmp_path: Path) -> None:
    """data.val_fraction = 0 is legitimate: every epoch's val_loss and val_acc are null (strict JSON)."""
    write_digit_folder(tmp_path / "images", per_class=3, corrupt=False)
    result = runner_cli(
        "submit", str(JOBS / "digits.toml"), *SPEC, *FOLDER, "--set=data.root=images", "--set=data.val_fraction=0",
        "--set=epochs=1", "--set=checkpoint.dir=run", "--quiet", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["val_loss"] is None and records[0]["val_acc"] is None and records[-1]["test_acc"] is not None
    assert "NaN" not in (tmp_path / "run" / "metrics.jsonl").read_text()
