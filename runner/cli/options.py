"""Arguments and options that several commands share, declared once."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Annotated

import typer

from runner.backends.registry import NAMES as BACKENDS


def choices(name: str, values: Iterable[str]) -> type[StrEnum]:
    """A Typer choice type from the constants the owning module declares (never a copy)."""
    return StrEnum(name, {value: value for value in values})  # type: ignore[return-value]


Backend = choices("Backend", BACKENDS)

SpecArg = Annotated[str, typer.Argument(metavar="SPEC", help="The job spec, a TOML file (e.g. jobs/digits.toml).")]
SetOpt = Annotated[
    list[str],
    typer.Option(
        "--set",
        "-s",
        metavar="KEY=VALUE",
        help="Override a spec key, dotted for tables: --set epochs=3 --set data.root=/data",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar: one plain line per epoch.")]
FreshOpt = Annotated[bool, typer.Option("--fresh", help="Start over instead of resuming from checkpoint.dir.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="With --fresh: delete what checkpoint.dir holds.")]
BackendOpt = Annotated[Backend, typer.Option("--backend", "-b", help="Where the job runs.")]  # type: ignore[valid-type]
NamespaceOpt = Annotated[str, typer.Option("--namespace", "-n", help="Kubernetes namespace (k8s backend).")]
ContextOpt = Annotated[str, typer.Option("--context", help="kubeconfig context (k8s backend; default: current).")]
ImageOpt = Annotated[str, typer.Option("--image", help="Image to run (default: [image] repository, content tag).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
RunArg = Annotated[
    str, typer.Argument(metavar="RUN", help="A run directory, local or a URL (k8s backend: a job name).")
]
RunDirArg = Annotated[str, typer.Argument(metavar="RUN", help="A run directory: a path or URL (gs://bucket/runs/x).")]
ModelRunArg = Annotated[
    str,
    typer.Argument(
        metavar="RUN",
        help="A run directory (a path or URL, gs://bucket/runs/x), or a job's promoted/ folder for its promoted "
        "model (gs://bucket/jobs/cnn/promoted).",
    ),
]
CheckpointOpt = Annotated[
    str | None,
    typer.Option(
        "--checkpoint",
        "-c",
        metavar="latest|STEP",
        help="Use a checkpoint's weights (default: the final ones; the newest checkpoint's if there are none yet).",
    ),
]
