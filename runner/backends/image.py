"""The container image a job runs in: its content tag, from the files it is built from.

The tag is a hash of the build context (what docker/Dockerfile copies) and the
spec's [image] table (the base image), so the same sources always give the same
tag and any change gives a new one; never `latest`, which a node may have cached
stale.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from runner.errors import UserError

if TYPE_CHECKING:
    from runner.spec import ImageSpec

# What docker/Dockerfile copies into the image; keep the two in step.
CONTEXT = ("pyproject.toml", "README.md", "docker/Dockerfile", "runner")


def source_root() -> Path | None:
    """The checkout runner runs from, if it runs from one (not from an installed wheel)."""
    root = Path(__file__).resolve().parents[2]  # runner/backends/image.py -> the checkout
    return root if (root / "docker" / "Dockerfile").is_file() else None


def context_files(root: Path) -> dict[str, bytes]:
    """Every file of the build context, by path relative to `root`, caches excluded."""
    files: dict[str, bytes] = {}
    for entry in CONTEXT:
        path = root / entry
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            files[file.relative_to(root).as_posix()] = file.read_bytes()
    return files


def content_tag(files: dict[str, bytes], image: ImageSpec) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    digest.update(image.base.encode())
    return digest.hexdigest()[:16]


def reference(image: ImageSpec) -> str:
    """`repository:tag` for this checkout's sources."""
    root = source_root()
    if root is None:
        raise UserError("--image: runner is not running from a checkout with docker/Dockerfile; name the image")
    return f"{image.repository}:{content_tag(context_files(root), image)}"


BUILDERS = ("docker", "podman", "buildah")  # `runner build --builder`; the first is the default


def build_commands(ref: str, image: ImageSpec, builder: str, push: bool) -> list[list[str]]:
    """The commands that build (and push) `ref` from the repository root (pure)."""
    build = ["bud"] if builder == "buildah" else ["build"]
    commands = [[builder, *build, "-f", "docker/Dockerfile", "--build-arg", f"BASE_IMAGE={image.base}", "-t", ref, "."]]
    if push:
        commands.append([builder, "push", ref])
    return commands


def run_commands(commands: list[list[str]], cwd: Path) -> None:
    """The thin edge: run each command, stopping at the first that fails."""
    import shutil
    import subprocess

    from runner.errors import RunFailed

    if shutil.which(commands[0][0]) is None:
        raise UserError(f"--builder: '{commands[0][0]}' is not installed here; install it or choose another builder")
    for command in commands:
        if subprocess.run(command, cwd=cwd).returncode != 0:
            raise RunFailed(f"'{' '.join(command[:2])}' failed (its output is above)")
