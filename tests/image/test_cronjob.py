"""The CronJob's container, run as the pod of one scheduled run: its Job's name (downward
API) names its own run directory under the job's prefix, and its gate promotes it."""

from __future__ import annotations

import json

import fsspec
import pytest

from tests.helpers import JOBS
from tests.image.conftest import Cluster, render

pytestmark = pytest.mark.usefixtures("engine")


def test_a_scheduled_runs_container_trains_into_its_own_directory_and_promotes_itself(
    image: str, bucket: str, cluster: Cluster
) -> None:
    prefix = f"{bucket}/runs/digits"
    manifests = render(
        JOBS / "digits.toml", "--schedule=0 3 * * *", "--set=device=cpu", "--set=threads=1", "--set=epochs=1",
        "--set=resources.gpus=0", "--set=promote.enabled=true", f"--set=checkpoint.dir={prefix}", f"--image={image}",
    )  # fmt: skip
    (cronjob,) = [m for m in manifests if m["kind"] == "CronJob"]
    job_name = f"{cronjob['metadata']['name']}-29412345"  # the controller names each run's Job so
    done = cluster.pod(manifests, "CronJob", image, {"metadata.labels['job-name']": job_name}).run()
    assert done.returncode == 0, done.stdout + done.stderr

    fs, _ = fsspec.url_to_fs(prefix)
    assert fs.exists(f"{prefix}/{job_name}/final/model.safetensors")
    (record,) = fs.ls(f"{prefix}/promoted")
    assert json.loads(fs.cat(record))["run"] == job_name
