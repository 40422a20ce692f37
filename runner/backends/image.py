"""The container image a job runs in: its content tag, from the files it is built from.

The tag is a hash of the build context (what docker/Dockerfile copies) and the
spec's [image] table (the base image), so the same sources always give the same
tag and any change gives a new one; never `latest`, which a node may have cached
stale.

The build context is staged in a temporary folder: runner's sources, and the spec's
`code` (a user model's files and packages, models/user.py) under code/, which the
image holds at IMAGE_CODE_DIR, on its PYTHONPATH. The spec a cluster runs names them
there (`in_image`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from runner.errors import UserError
from runner.models.user import code_files

if TYPE_CHECKING:
    from runner.spec_tables import ImageSpec, JobSpec

# What docker/Dockerfile copies into the image; keep the two in step.
CONTEXT = ("pyproject.toml", "README.md", "docker/Dockerfile", "docker/torch.txt", "runner")
CODE = "code"  # the context's folder of the spec's code, copied to IMAGE_CODE_DIR
IMAGE_CODE_DIR = "/opt/runner/code"
# The staged context's one modification time: 1980-01-02 UTC, a date zip (the wheel pip builds
# in the image) can hold in every time zone.
STAGED_MTIME = 315_619_200


def source_root() -> Path | None:
    """The checkout runner runs from, if it runs from one (not from an installed wheel)."""
    root = Path(__file__).resolve().parents[2]  # runner/backends/image.py -> the checkout
    return root if (root / "docker" / "Dockerfile").is_file() else None


def context_files(root: Path, code: Sequence[str] = ()) -> dict[str, bytes]:
    """Every file of the build context, by its path in the context: runner's, from the
    checkout at `root`, caches excluded; then each of `code` (absolute paths, files or
    package folders) under code/<its name>, as the spec's `code` names it."""
    files: dict[str, bytes] = {}
    for entry in CONTEXT:
        path = root / entry
        for file in sorted([*path.rglob("*.py"), *_package_data(root, path)]) if path.is_dir() else [path]:
            files[file.relative_to(root).as_posix()] = file.read_bytes()
    files.update({f"{CODE}/{name}": data for name, data in code_files(code).items()})
    return files


def _package_data(root: Path, folder: Path) -> list[Path]:
    """The files besides modules that pyproject.toml's [tool.setuptools.package-data] puts in
    the wheel (the serve page), under `folder`: the image installs runner from the context."""
    import tomllib

    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"].get("package-data", {})
    found = [f for pkg, patterns in data.items() for p in patterns for f in root.glob(f"{pkg.replace('.', '/')}/{p}")]
    return [f for f in found if f.is_file() and folder in f.parents]


def stage(files: dict[str, bytes], into: Path) -> None:
    """Write the build context `files` into the folder `into` (code/ even when empty), each
    file and folder with a fixed mode and modification time: the builder tars the folder
    with both, and COPY keeps them in the layer, so the same files give the same layers
    whenever they were staged and whatever the umask."""
    import os

    (into / CODE).mkdir(parents=True, exist_ok=True)
    for name in sorted(files):
        (into / name).parent.mkdir(parents=True, exist_ok=True)
        (into / name).write_bytes(files[name])
    # Deepest first: writing into a folder changes its time, so each folder's is set after its content's.
    for path in sorted(into.rglob("*"), key=lambda p: len(p.parts), reverse=True) + [into]:
        path.chmod(0o755 if path.is_dir() else 0o644)
        os.utime(path, (STAGED_MTIME, STAGED_MTIME))


def in_image(spec: JobSpec) -> JobSpec:
    """`spec` as the image runs it: its code where the image holds it (pure)."""
    return spec.model_copy(update={"code": [f"{IMAGE_CODE_DIR}/{Path(c).name}" for c in spec.code]})


def describe(files: dict[str, bytes], code: Sequence[str]) -> list[str]:
    """The build context, in comment lines for `runner build --dry-run` (pure)."""
    own = sum(1 for name in files if not name.startswith(f"{CODE}/"))
    lines = [f"# build context (staged in a temporary folder): runner's sources ({own} files)"]
    lines += [f"# + {CODE}/{Path(c).name} <- {c} (in the image: {IMAGE_CODE_DIR}/{Path(c).name})" for c in code]
    return lines


def content_tag(files: dict[str, bytes], image: ImageSpec) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    digest.update(image.base.encode())
    return digest.hexdigest()[:16]


def build_context(code: Sequence[str] = ()) -> dict[str, bytes]:
    """The build context for this checkout's sources and `code` (see `context_files`)."""
    root = source_root()
    if root is None:
        raise UserError("--image: runner is not running from a checkout with docker/Dockerfile; name the image")
    return context_files(root, code)


def reference(image: ImageSpec, code: Sequence[str] = ()) -> str:
    """`repository:tag` for this checkout's sources and `code`."""
    return f"{image.repository}:{content_tag(build_context(code), image)}"


BUILDERS = ("docker", "podman", "buildah")  # `runner build --builder`; the first is the default


def build_commands(ref: str, image: ImageSpec, builder: str, push: bool) -> list[list[str]]:
    """The commands that build (and push) `ref`, run in the staged build context (pure)."""
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
