"""The run directory: every path in it, and every read and write of its files.

<checkpoint.dir>/
  spec.toml                 the resolved spec (defaults filled in, overrides applied)
  metrics.jsonl             one JSON object per finished epoch, then a final test record
  final/model.safetensors   the trained weights, with what is needed to use them as metadata
  status.json               the run's state and a heartbeat, rewritten while it runs (heartbeat.py)
  log.txt                   what the run printed, one timestamped line per message or epoch
  tensorboard/              TensorBoard event files, one per attempt (training/tensorboard.py)
  checkpoints/              payloads and commit records: read through checkpoints.CheckpointIndex,
                            written by writer.CheckpointWriter, the only writer

No other module builds a path inside a run directory. Reads of files a run may not
have written yet (status, log, spec, metrics) give None or empty rather than raise.
"""

from __future__ import annotations

import json
import time
import tomllib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from runner import __version__, safetensors_file, storage, strict_json
from runner.errors import UserError

if TYPE_CHECKING:
    from runner.data.preprocessing import Preprocessing
    from runner.rundir.checkpoints import CheckpointIndex
    from runner.rundir.writer import CheckpointWriter

SPEC = "spec.toml"
METRICS = "metrics.jsonl"
FINAL_WEIGHTS = "final/model.safetensors"
CHECKPOINTS = "checkpoints"
STATUS = "status.json"
LOG = "log.txt"
TENSORBOARD = "tensorboard"
OWNED = (SPEC, METRICS, CHECKPOINTS, "final", STATUS, LOG, TENSORBOARD)  # what `--fresh --overwrite` may delete

# GCS takes about one write per second to the same object name; faster rewrites get
# 429s and stall in retries. Epochs of a small model on a GPU can be shorter than that.
METRICS_MIN_INTERVAL_S = 1.0


class RunDir:
    def __init__(self, url: str):
        self.url = url  # a path or URL, kept a string (pathlib would turn gs://b into gs:/b)
        self._metrics_written = -float("inf")
        self._metrics_skipped: list[dict[str, Any]] | None = None  # what the rate limit held back

    def path(self, name: str) -> str:
        return storage.join(self.url, name)

    @property
    def checkpoints_url(self) -> str:
        return self.path(CHECKPOINTS)

    @property
    def tensorboard_url(self) -> str:
        """Where the TensorBoard event files go: `tensorboard --logdir` reads it, or any folder above."""
        return self.path(TENSORBOARD)

    def checkpoint_index(self) -> CheckpointIndex:
        """The committed checkpoints, read-only (what `ls`, `status`, `eval` and resume read)."""
        from runner.rundir.checkpoints import CheckpointIndex

        return CheckpointIndex(self.checkpoints_url)

    def checkpoint_writer(self, keep: int) -> CheckpointWriter:
        """The run's writer of checkpoints, keeping the `keep` newest; a run has one at a time
        (claim() makes it so). No I/O until it is used."""
        from runner.rundir.writer import CheckpointWriter

        return CheckpointWriter(self.checkpoints_url, keep)

    # -- spec.toml -------------------------------------------------------------

    def write_spec(self, toml_text: str) -> None:
        storage.write_bytes(self.path(SPEC), toml_text.encode())

    def read_spec(self) -> dict[str, Any] | None:
        """The resolved spec as a raw table, or None if the run has not written it yet."""
        text = storage.read_text(self.path(SPEC))
        return tomllib.loads(text) if text else None

    # -- metrics.jsonl ---------------------------------------------------------

    def write_metrics(self, records: list[dict[str, Any]], final: bool = False) -> bool:
        """Rewrite metrics.jsonl whole (object stores have no append; the records are small).

        At most once per METRICS_MIN_INTERVAL_S: an earlier call is skipped (the next
        one writes every record), except the final one, which waits its turn.
        """
        wait = self._metrics_written + METRICS_MIN_INTERVAL_S - time.monotonic()
        if wait > 0:
            if not final:
                self._metrics_skipped = records
                return False
            time.sleep(wait)
        lines = "".join(strict_json.dumps(r) + "\n" for r in records)
        storage.write_bytes(self.path(METRICS), lines.encode())
        self._metrics_written, self._metrics_skipped = time.monotonic(), None
        return True

    def flush_metrics(self) -> None:
        """Write what the rate limit held back, if anything (waiting its turn): for a process
        that ends without a final record, so that `runner status` shows every epoch."""
        if self._metrics_skipped is not None:
            self.write_metrics(self._metrics_skipped, final=True)

    def read_metrics(self) -> list[dict[str, Any]]:
        """metrics.jsonl's records, oldest first; [] before the first epoch ends."""
        text = storage.read_text(self.path(METRICS))
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    # -- status.json and log.txt (written by heartbeat.Heartbeat) -------------

    def read_status(self) -> dict[str, Any] | None:
        text = storage.read_text(self.path(STATUS))
        return json.loads(text) if text else None

    def write_status(self, status: dict[str, Any]) -> None:
        storage.write_bytes(self.path(STATUS), strict_json.dumps(status, indent=1).encode())

    def read_log(self) -> list[str]:
        return storage.read_text(self.path(LOG)).splitlines()

    def write_log(self, lines: list[str]) -> None:
        storage.write_bytes(self.path(LOG), "".join(f"{line}\n" for line in lines).encode())

    # -- final weights ---------------------------------------------------------

    def read_final(self) -> tuple[dict[str, Any], dict[str, str]]:
        """The final weights and their metadata (see `weights_metadata`); FileNotFoundError if none."""
        return safetensors_file.loads(storage.read_bytes(self.path(FINAL_WEIGHTS)))

    def write_final(self, weights: dict[str, Any], metadata: dict[str, str]) -> None:
        # The same bytes for the same weights and metadata: two equal runs' files checksum equal.
        storage.write_bytes(self.path(FINAL_WEIGHTS), safetensors_file.dumps(weights, metadata))

    # -- the directory as a whole ----------------------------------------------

    def looks_like_a_run(self) -> bool:
        names = storage.list_names(self.url)
        return SPEC in names or CHECKPOINTS in names

    def delete_run(self) -> None:
        """Delete what a run writes here, and nothing else."""
        for name in OWNED:
            storage.delete_tree(self.path(name))


def weights_metadata(
    model: str,
    model_options: dict[str, Any],
    dataset: str,
    pre: Preprocessing,
    *,
    code: Sequence[str] = (),
    data: dict[str, Any] | None = None,
) -> dict[str, str]:
    """What a program needs to use the weights without the spec (safetensors metadata is str->str):
    the model and its options, the data set's name, its preprocessing, the fingerprint of the
    data it was trained on (data.fingerprint; absent for checkpoints written before it), and
    for a user model (`module:factory`), `code`: where its files were (a JSON list of paths)."""
    return {
        **({"data_fingerprint": strict_json.dumps(data)} if data is not None else {}),
        "format": "runner/1",
        "runner_version": __version__,
        "model": model,
        "model_options": strict_json.dumps(model_options),
        **({"code": strict_json.dumps(list(code))} if code else {}),
        "dataset": dataset,
        **pre.to_metadata(),
    }


def open_run(url: str) -> RunDir:
    """The run directory a user named on the command line, or a one-line UserError (exit 2)."""
    names = _names(url, "RUN")
    if not names:
        raise UserError(f"{url}: no run there (nothing found); name a run directory such as runs/digits")
    run_dir = RunDir(url)
    if not run_dir.looks_like_a_run():
        raise UserError(
            f"{url}: not a run directory (no {SPEC} or {CHECKPOINTS}/); name a run directory such as runs/digits"
        )
    return run_dir


def _names(url: str, what: str) -> list[str]:
    """What is directly in `url`, a command-line argument (`what`: RUN, PREFIX): a store that
    cannot be used, or stops answering, is one line naming the argument."""
    storage.check_reachable(url, what)
    try:
        return storage.list_names(url)
    except storage.Denied:
        raise  # names the permission already
    except OSError as e:
        raise storage.failure(url, e, what) from None


def find_runs(prefix: str) -> list[RunDir]:
    """The run directories directly under `prefix`, or `prefix` itself if it is one."""
    names = _names(prefix, "PREFIX")
    if not names:
        raise UserError(f"{prefix}: nothing there; name a directory or bucket prefix that holds run directories")
    if SPEC in names or CHECKPOINTS in names:
        return [RunDir(prefix)]
    runs = [RunDir(storage.join(prefix, name)) for name in names]
    return [r for r in runs if r.looks_like_a_run()]


def prefix_of(run_url: str) -> str | None:
    """The folder that holds the run directory `run_url` (a job's prefix: a CronJob's runs are
    in it side by side), "." for a bare relative name; None for a run directory at a bucket's
    root, beside which are other buckets, which runner does not list (storage.buckets.list)."""
    _, found, rest = run_url.rstrip("/").partition("://")
    if found and "/" not in rest:
        return None
    parent = run_url.rstrip("/").rpartition("/")[0]
    return parent or ("/" if run_url.startswith("/") else ".")


def newest_finished_sibling(run_url: str) -> RunDir | None:
    """The most recently finished run directory beside `run_url` (not itself), if any.

    A run directory at a bucket's root has none: beside it are other buckets, which runner
    does not list (that needs storage.buckets.list).
    """
    parent = prefix_of(run_url)
    if parent is None:
        return None
    own = run_url.rstrip("/").rpartition("/")[2]
    finished = []
    for name in storage.list_names(parent):
        weights = storage.join(parent, name, FINAL_WEIGHTS)
        if name != own and storage.exists(weights):
            finished.append((storage.modified(weights), storage.join(parent, name)))
    return RunDir(max(finished)[1]) if finished else None
