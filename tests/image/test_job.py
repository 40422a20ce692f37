"""The rendered Job's container, run as its pod runs: preempted, resumed in a new container,
ending with the weights the same spec gives on the host."""

from __future__ import annotations

import subprocess
from pathlib import Path

import fsspec
import pytest

from tests.helpers import JOBS, REPO, read_weights, runner_cli, same_tensors
from tests.image.conftest import Cluster

pytestmark = pytest.mark.usefixtures("engine")

# The digits CNN, small and on one thread, saving often: three epochs of 21 steps.
SETS = [
    "--set=device=cpu",
    "--set=threads=1",
    "--set=epochs=3",
    "--set=checkpoint.every_steps=5",
    "--set=resources.gpus=0",
    "--set=resources.cpu=1",
]


def test_a_preempted_job_container_resumes_in_a_new_one_bitwise_equal_to_the_host(
    image: str, bucket: str, cluster: Cluster, tmp_path: Path
) -> None:
    run_dir = f"{bucket}/runs/digits"
    first = cluster.job(JOBS / "digits.toml", SETS, image, run_dir)
    attempt = first.start()
    attempt.wait_for(r"epoch 1/3", timeout=300)
    first.stop()  # SIGTERM to PID 1, then SIGKILL after the pod's terminationGracePeriodSeconds
    assert attempt.finish(60) == 143, attempt.out
    last = attempt.out.strip().splitlines()[-1]
    assert last.startswith("stopped by SIGTERM at step "), attempt.out

    resumed = cluster.job(JOBS / "digits.toml", SETS, image, run_dir).start()
    assert resumed.finish(300) == 0, resumed.out
    assert "resumed from step " in resumed.out

    host = runner_cli("run", str(JOBS / "digits.toml"), *SETS, f"--set=checkpoint.dir={tmp_path / 'host'}", cwd=REPO)
    assert host.returncode == 0, host.stderr
    with fsspec.open(f"{run_dir}/final/model.safetensors", "rb") as f:
        (tmp_path / "image.safetensors").write_bytes(f.read())
    host_weights = read_weights(tmp_path / "host/final/model.safetensors")
    assert same_tensors(read_weights(tmp_path / "image.safetensors"), host_weights)


def test_the_image_runs_the_torch_the_suite_tests(image: str) -> None:
    import torch
    import torchvision

    done = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c",
         "import torch, torchvision; print(torch.__version__, torchvision.__version__)"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.stdout.split() == [torch.__version__, torchvision.__version__], done.stderr
