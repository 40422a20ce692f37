"""A job given the least privilege that works (roles/storage.objectAdmin on one bucket, no
storage.buckets.get) trains into an empty bucket, and `ls`, `status`, `eval` read the run;
a permission really missing is named in one line, exit 2. Through the real CLI, with
tests.helpers.IamProxy refusing in front of the emulator what the credential lacks (gcsfs #462)."""

from __future__ import annotations

import json
from pathlib import Path

from runner import storage
from tests.helpers import JOBS, OBJECT_ADMIN, OBJECT_VIEWER, runner_cli

SMALL = ["--set=epochs=1", "--set=model=mlp", "--set=model_options={}", "--set=threads=1", "--set=device=cpu"]


def train(run_dir: str, cwd: Path):
    return runner_cli("run", str(JOBS / "digits.toml"), *SMALL, f"--set=checkpoint.dir={run_dir}", "--quiet", cwd=cwd)


def assert_one_line_exit_2(result, *expected: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(text in lines[0] for text in expected), lines[0]
    return lines[0]


def test_a_first_run_into_an_empty_bucket_with_object_permissions_only(iam_proxy, bucket: str, tmp_path: Path) -> None:
    proxy = iam_proxy(OBJECT_ADMIN)
    run = f"{bucket}/runs/x"
    trained = train(run, tmp_path)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    listed = runner_cli("ls", f"{bucket}/runs", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert row["run"] == run and row["state"] == "done" and row["checkpoints"]
    status = runner_cli("status", run, "--json", cwd=tmp_path)
    assert status.returncode == 0 and json.loads(status.stdout)["test_acc"] == row["test_acc"], status.stderr
    evaluated = runner_cli("eval", run, "--json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["accuracy"] > 0.5
    assert proxy.denied == [], proxy.denied  # not once the bucket's metadata, nor a bucket list
    assert {p for _, _, p in proxy.requests} <= OBJECT_ADMIN


def test_a_credential_that_cannot_list_objects_is_told_which_permission(iam_proxy, bucket: str, tmp_path: Path) -> None:
    iam_proxy(OBJECT_ADMIN - {"storage.objects.list"})
    line = assert_one_line_exit_2(train(f"{bucket}/runs/x", tmp_path), "storage.objects.list")
    assert line.startswith(f"error: checkpoint.dir: {bucket}/runs/x: these credentials lack storage.objects.list")
    assert "storage.buckets" not in line and "does not exist" not in line


def test_a_missing_bucket_is_said_to_not_exist(iam_proxy, bucket: str, tmp_path: Path) -> None:
    proxy = iam_proxy(OBJECT_ADMIN)
    assert_one_line_exit_2(train("gs://no-such-bucket-here/runs/x", tmp_path), "bucket 'no-such-bucket-here'",
                           "does not exist", "gcloud storage buckets create gs://no-such-bucket-here")  # fmt: skip
    assert proxy.denied == []


def test_a_credential_that_cannot_write_is_told_which_permission_before_anything_is_written(
    iam_proxy, bucket: str, tmp_path: Path
) -> None:
    proxy = iam_proxy(OBJECT_VIEWER)
    line = assert_one_line_exit_2(train(f"{bucket}/runs/x", tmp_path), "storage.objects.create")
    assert line.startswith(f"error: checkpoint.dir: {bucket}/runs/x/checkpoints/commits/")
    assert [p for _, _, p in proxy.denied] == ["storage.objects.create"]  # the claim, the first write
    assert storage.list_names(f"{bucket}/runs/x") == []
