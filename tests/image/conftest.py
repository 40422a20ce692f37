"""Image tests: the real image, built by `runner build` on a base made without a registry
(scripts/build-base.sh), its containers run as the rendered pods run (pods.py). Every test
here is marked `slow` and `image`; without a container engine they skip with the reason,
except in CI (CI set), which installs and starts one (.ci/run), where they fail instead.

The base and the image are built once per run of the suite, whichever worker asks first
(a file lock beside the workers' temporary folders, held for each build alone); the engine's
layer cache makes every later `runner build` of the same sources take seconds."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from filelock import FileLock

from tests.helpers import JOBS, REPO, runner_cli
from tests.image.pods import Pod, container_run, remove_orphans

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.image)


def engine_unavailable() -> str | None:
    """Why no container can be built and run here, or None if one can."""
    if shutil.which("docker") is None:
        return "no docker client (apt-get install docker.io, then start dockerd)"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        return "no Docker engine answers (start dockerd as root; .ci/run does)"
    if shutil.which("mmdebstrap") is None:
        return "mmdebstrap is not installed (apt-get install mmdebstrap): scripts/build-base.sh makes the base with it"
    return None


@pytest.fixture(scope="session")
def engine() -> None:
    if reason := engine_unavailable():
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the image tests: {reason}")
        pytest.skip(reason)
    remove_orphans()  # left by a test run that was killed before it could remove them


@pytest.fixture(scope="session")
def build_lock(tmp_path_factory: pytest.TempPathFactory) -> FileLock:
    """One build at a time across the run's workers (their temporary folders share this
    parent), held for a build alone: the next one finds the engine's layer cache warm."""
    return FileLock(tmp_path_factory.getbasetemp().parent / "image-build.lock")


def build(spec: Path, base: str, lock: FileLock, *sets: str) -> str:
    """`runner build spec` on `base`: the image's reference (repository:content-tag)."""
    with lock:
        done = runner_cli("build", str(spec), f"--set=image.base={base}", *sets, cwd=REPO, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def base_image(engine: None, build_lock: FileLock) -> str:
    """The base scripts/build-base.sh makes (Debian, a venv, torch as docker/torch.txt pins)."""
    with build_lock:
        done = subprocess.run([REPO / "scripts" / "build-base.sh"], capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def image(base_image: str, build_lock: FileLock) -> str:
    """runner's image for the built-in models (no user code)."""
    return build(JOBS / "digits.toml", base_image, build_lock)


def render(spec: Path, *args: str) -> list[dict]:
    """The manifests `runner render` prints for `spec`."""
    done = runner_cli("render", str(spec), *args, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return list(yaml.safe_load_all(done.stdout))


class Cluster:
    """The pods a test runs, as a cluster would run them from rendered manifests: each
    container named and given a folder of its own; all removed at the test's end. Their
    gcsfs reaches the GCS emulator on loopback (on GKE: Workload Identity)."""

    def __init__(self, tmp: Path, gcs_emulator: str):
        self.tmp, self.env, self.pods = tmp, {"STORAGE_EMULATOR_HOST": gcs_emulator}, []

    def pod(self, manifests: list[dict], kind: str, image: str, downward: dict[str, str], **more: Any) -> Pod:
        """The container of the `kind` object among `manifests`; `more` for container_run."""
        (workload,) = [m for m in manifests if m["kind"] == kind]
        maps = {m["metadata"]["name"]: m["data"] for m in manifests if m["kind"] == "ConfigMap"}
        name = f"runner-test-{uuid.uuid4().hex[:12]}"
        pod = container_run(
            workload, maps, image=image, name=name, files=self.tmp / name, downward=downward,
            env={**self.env, **more.pop("env", {})}, **more,
        )  # fmt: skip
        self.pods.append(pod)
        return pod

    def job(self, spec: Path, sets: list[str], image: str, run_dir: str, **more: Any) -> Pod:
        """The container of the Job `runner render` prints for `spec` with `sets`, its run in `run_dir`."""
        manifests = render(spec, *sets, f"--set=checkpoint.dir={run_dir}", f"--image={image}")
        (job,) = [m for m in manifests if m["kind"] == "Job"]
        return self.pod(manifests, "Job", image, {"metadata.labels['job-name']": job["metadata"]["name"]}, **more)


@pytest.fixture
def cluster(tmp_path: Path, gcs_emulator: str) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path, gcs_emulator)
    yield cluster
    for pod in cluster.pods:
        pod.remove()
