"""The backend interface: where `runner submit` sends a job, and how the other commands
find it again (torchx's scheduler API in small). registry.py picks an implementation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from runner.spec import JobSpec


@dataclass(frozen=True)
class Submission:
    """A validated job and how the user asked for it."""

    spec_path: str
    overrides: tuple[str, ...]
    spec: JobSpec
    quiet: bool = False  # local: no progress bar
    fresh: bool = False  # local: start over instead of resuming
    overwrite: bool = False  # local, with fresh: delete what the run directory holds
    image: str = ""  # k8s: the image to run (default: [image] repository, content tag)


class Backend(Protocol):
    """RUN is a run directory (local) or a Job/CronJob name (k8s)."""

    def submit(self, job: Submission) -> int:
        """Start the job. Returns `runner submit`'s exit code: the run's own (local, which
        trains in the foreground) or 0 once the cluster has the objects (k8s)."""
        ...

    def status(self, run: str) -> dict[str, Any]: ...

    def logs(self, run: str, follow: bool = False) -> Iterator[str]: ...

    def cancel(self, run: str) -> str:
        """Stop the run (it saves a checkpoint first). Returns what happened, one line."""
        ...
