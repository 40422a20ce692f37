"""Least privilege on GCS: runner works with object permissions alone, and names the one missing.

The emulator has no IAM, so tests.helpers.IamProxy stands in front of it and grants what a
careful user grants a job (roles/storage.objectAdmin, or less): the bucket's metadata
(storage.buckets.get) and the project's bucket list (storage.buckets.list) are refused with
GCS's 403, as GCS does.
"""

from __future__ import annotations

import pytest

from runner import storage
from runner.errors import UserError
from runner.rundir.layout import FINAL_WEIGHTS, RunDir, find_runs, newest_finished_sibling, open_run
from tests.helpers import OBJECT_ADMIN, OBJECT_VIEWER


def one_line(error: Exception) -> str:
    assert "\n" not in str(error), str(error)
    return str(error)


def test_an_empty_bucket_is_usable_without_the_buckets_metadata(iam_proxy, bucket: str) -> None:
    proxy = iam_proxy(OBJECT_ADMIN)
    for url in (bucket, f"{bucket}/", f"{bucket}/runs/x"):
        storage.check_reachable(url, "checkpoint.dir")
    assert proxy.requests and proxy.denied == []


def test_a_missing_object_list_permission_is_named(iam_proxy, bucket: str) -> None:
    iam_proxy(OBJECT_ADMIN - {"storage.objects.list"})
    with pytest.raises(UserError) as refused:
        storage.check_reachable(f"{bucket}/runs/x", "checkpoint.dir")
    message = one_line(refused.value)
    assert message.startswith(f"checkpoint.dir: {bucket}/runs/x: ") and "storage.objects.list" in message
    assert "storage.buckets" not in message


def test_a_missing_bucket_is_still_said_to_not_exist(iam_proxy, bucket: str) -> None:
    proxy = iam_proxy(OBJECT_ADMIN)
    with pytest.raises(UserError) as refused:
        storage.check_reachable("gs://no-such-bucket-here/runs/x", "RUN")
    message = one_line(refused.value)
    assert message.startswith("RUN: bucket 'no-such-bucket-here' of 'gs://no-such-bucket-here/runs/x' does not exist")
    assert "gcloud storage buckets create gs://no-such-bucket-here" in message
    assert proxy.denied == []


def test_a_missing_write_permission_is_named_and_is_bad_input(iam_proxy, bucket: str) -> None:
    iam_proxy(OBJECT_VIEWER)
    url = f"{bucket}/runs/x/spec.toml"
    with pytest.raises(storage.Denied) as refused:
        storage.write_bytes(url, b"x")
    assert isinstance(refused.value, OSError)  # still caught where store errors are
    assert "storage.objects.create" in one_line(refused.value)
    error = storage.failure(f"{bucket}/runs/x", refused.value, "checkpoint.dir")
    assert isinstance(error, UserError) and "storage.objects.create" in one_line(error)
    assert one_line(error).startswith(f"checkpoint.dir: {url}: ")


def test_a_missing_read_permission_is_named(iam_proxy, bucket: str) -> None:
    storage.write_bytes(f"{bucket}/runs/x/spec.toml", b"x")  # straight to the emulator
    iam_proxy(OBJECT_ADMIN - {"storage.objects.get"})
    with pytest.raises(storage.Denied) as refused:
        storage.read_bytes(f"{bucket}/runs/x/spec.toml")
    assert "storage.objects.get" in one_line(refused.value)


def test_every_read_and_write_of_a_run_directory_needs_object_permissions_only(iam_proxy, bucket: str) -> None:
    # What runner does to a bucket besides training (tests/e2e/test_permissions.py trains): find
    # runs at the bucket's root and under a prefix, open one, its final weights and their age,
    # a sibling to warm-start from, deleting a run; and a run directory at the bucket's root.
    proxy = iam_proxy(OBJECT_ADMIN)
    for name in ("a", "b"):
        run = RunDir(f"{bucket}/runs/{name}")
        run.write_spec('name = "x"\n')
        storage.write_bytes(run.path("final/model.safetensors"), b"weights")
    assert [r.url for r in find_runs(f"{bucket}/runs")] == [f"{bucket}/runs/a", f"{bucket}/runs/b"]
    assert find_runs(bucket) == []  # the root holds no run, only runs/
    final = open_run(f"{bucket}/runs/a").path(FINAL_WEIGHTS)
    assert storage.exists(final) and storage.modified(final) is not None
    sibling = newest_finished_sibling(f"{bucket}/runs/c")
    assert sibling is not None and sibling.url in (f"{bucket}/runs/a", f"{bucket}/runs/b")
    RunDir(f"{bucket}/runs/b").delete_run()
    assert not RunDir(f"{bucket}/runs/b").looks_like_a_run()
    assert newest_finished_sibling(f"{bucket}/runs/c").url == f"{bucket}/runs/a"
    # A run directory that is the bucket itself has no siblings runner may look for.
    assert newest_finished_sibling(bucket) is None
    RunDir(bucket).write_spec('name = "x"\n')
    assert open_run(bucket).looks_like_a_run() and [r.url for r in find_runs(bucket)] == [bucket]
    assert proxy.denied == [], proxy.denied


def test_a_403_from_anywhere_in_a_run_is_one_line_naming_the_permission() -> None:
    # gcsfs's own error for a 403: "Forbidden: <path>", then GCS's message on a line of its own.
    raw = OSError(
        "Forbidden: b/bkt/o/runs%2Fx%2Fstatus.json\nsa@p.iam.gserviceaccount.com does not have "
        "storage.objects.delete access to the Google Cloud Storage object. Permission 'storage.objects.delete' "
        "denied on resource (or it may not exist)."
    )
    error = storage.failure("gs://bkt/runs/x", raw, "checkpoint.dir")
    assert isinstance(error, UserError) and "storage.objects.delete" in one_line(error)
    assert one_line(error).startswith("checkpoint.dir: gs://bkt/runs/x: these credentials lack storage.objects.delete")
