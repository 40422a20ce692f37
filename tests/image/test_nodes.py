"""Two containers as the two pods of the rendered 2-node Indexed Job: they meet at node 0's
rendezvous through the headless Service's name, train, and when node 1's pod is killed a
replacement joins and the job finishes, bitwise equal to the same world size on the host."""

from __future__ import annotations

import re
import time
from pathlib import Path

import fsspec
import pytest

from tests.e2e.test_distributed import first_of
from tests.helpers import JOBS, REPO, read_weights, runner_cli, same_tensors
from tests.image.conftest import Cluster, render

pytestmark = pytest.mark.usefixtures("engine")

SPEC = [
    "--set=device=cpu",
    "--set=threads=1",
    "--set=epochs=2",
    "--set=batch_size=32",
    "--set=checkpoint.every_steps=3",
]
NODES = ["--set=resources.nodes=2", "--set=resources.procs_per_node=1", "--set=resources.gpus=0"]


def test_two_node_containers_rendezvous_lose_a_node_and_recover_bitwise(
    image: str, bucket: str, cluster: Cluster, tmp_path: Path
) -> None:
    run_dir = f"{bucket}/runs/nodes"
    manifests = render(JOBS / "digits.toml", *SPEC, *NODES, f"--set=checkpoint.dir={run_dir}", f"--image={image}")
    (job,) = [m for m in manifests if m["kind"] == "Job"]
    assert job["spec"]["completionMode"] == "Indexed"
    downward = {"metadata.labels['job-name']": job["metadata"]["name"]}
    pods = [cluster.pod(manifests, "Job", image, downward, index=i) for i in (0, 1)]
    first, second = (pod.start() for pod in pods)
    fs, _ = fsspec.url_to_fs(run_dir)
    deadline = time.monotonic() + 240
    while not fs.exists(f"{run_dir}/metrics.jsonl"):  # an epoch done, checkpoints committed
        assert time.monotonic() < deadline and first.proc.poll() is None, first.out + second.out
        time.sleep(0.5)
        fs.invalidate_cache()
    pods[1].kill()  # the node is gone: SIGKILL, no grace
    second.finish(60)
    replacement = cluster.pod(manifests, "Job", image, downward, index=1).start()  # the Job controller's new pod
    first_of([first, replacement], r"resumed from step \d+", timeout=240)
    assert first.finish(300) == 0, first.out
    assert replacement.finish(60) == 0, replacement.out
    assert not re.search(r"frame #|Traceback|failed \(exitcode", first.out + replacement.out), first.out

    host = runner_cli(
        "submit", str(JOBS / "digits.toml"), *SPEC, "--set=resources.procs_per_node=2",
        f"--set=checkpoint.dir={tmp_path / 'host'}", "--quiet", cwd=REPO,
    )  # fmt: skip
    assert host.returncode == 0, host.stderr
    with fsspec.open(f"{run_dir}/final/model.safetensors", "rb") as f:
        (tmp_path / "image.safetensors").write_bytes(f.read())
    host_weights = read_weights(tmp_path / "host/final/model.safetensors")
    assert same_tensors(read_weights(tmp_path / "image.safetensors"), host_weights)
