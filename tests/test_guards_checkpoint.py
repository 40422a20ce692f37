"""Guard tests for checkpoint behaviours no other test pins down: a corrupt byte only the
MD5 can catch, fencing once the zombie's next record was pruned, and retention sparing
the checkpoint a real run resumed from. Each was seen failing under a one-line mutation
of the product code (named in its docstring)."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from runner import storage
from runner.rundir.checkpoints import Corrupt, Entry
from runner.rundir.layout import RunDir
from runner.rundir.writer import KEEP_RECORDS, CheckpointWriter, Fenced, encode
from tests.helpers import JOBS, REPO

# Bytes that cannot turn up by chance in a payload: 4096 float32s counting up from 1e6.
MARKER = torch.arange(1_000_000, 1_004_096, dtype=torch.float32)


def commit(store: CheckpointWriter, step: int) -> Entry:
    state = {"marker": MARKER, "weights": torch.full((64,), float(step))}
    return store.commit(encode(state, 'name = "x"\n', {}), {"epoch": 0, "batch": step, "step": step})


def claimed(run: str, keep: int = 3) -> CheckpointWriter:
    store = RunDir(run).checkpoint_writer(keep)
    store.refresh()
    store.claim(store.entries[0].file if store.entries else None)
    return store


def test_a_byte_flipped_in_tensor_data_is_caught_by_the_md5_and_resume_falls_back(bucket: str) -> None:
    """Mutation: CheckpointIndex.load without the MD5 comparison (the size check kept)."""
    run = f"{bucket}/runs/a"
    store = claimed(run)
    commit(store, 5)
    newest = commit(store, 10)
    url = storage.join(store.dir, newest.file)
    data = storage.read_bytes(url)
    raw = MARKER.numpy().tobytes()
    start = data.find(raw)
    assert start > 0 and data.find(raw, start + 1) == -1, "the marker's storage is in the payload, once"
    at = start + len(raw) // 2  # deep inside the tensor's data: no header or zip metadata near
    damaged = data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]
    storage.write_bytes(url, damaged)
    assert len(storage.read_bytes(url)) == newest.size  # the size check cannot see it
    # Control: the damage is invisible to torch.load; only the MD5 can tell.
    loaded = torch.load(io.BytesIO(damaged), map_location="cpu", weights_only=True)
    assert not torch.equal(loaded["state"]["marker"], MARKER)

    reader = RunDir(run).checkpoint_index()
    assert [e.step for e in reader.refresh()] == [10, 5]
    warnings: list[str] = []
    state, found = reader.newest_valid(warnings.append)
    assert found.step == 5, f"resumed from step {found.step}, a checkpoint with a damaged tensor"
    assert torch.equal(state["state"]["weights"], torch.full((64,), 5.0))
    assert torch.equal(state["state"]["marker"], MARKER)
    assert len(warnings) == 1, warnings
    assert f"checkpoint at step 10 ({newest.file}) is unusable" in warnings[0] and "falling back" in warnings[0]
    assert f"MD5 {storage.md5(damaged)}, committed as {newest.size} bytes, {newest.md5}" in warnings[0]


def test_a_zombie_whose_next_record_was_pruned_is_still_fenced_and_deletes_nothing(bucket: str) -> None:
    """Mutation: in CheckpointWriter.commit, `!= self.seq` weakened to `< self.seq`.

    The zombie's next seq was pruned by the newer writer, so create-only no longer
    catches it; only the "newest record is not ours" check does.
    """
    run = f"{bucket}/runs/a"
    zombie = claimed(run)  # record 1
    commit(zombie, 1)  # record 2
    newer = claimed(run)  # the retried pod: record 3, pinned to the zombie's checkpoint
    for step in range(2, 2 + KEEP_RECORDS + 2):  # records 4..25: records 1..5 are pruned
        commit(newer, step)
    records = storage.list_names(newer.records)
    assert f"{zombie.seq + 1:010d}.json" not in records, records  # the zombie's next seq is free again

    fenced = False
    try:
        commit(zombie, 99)  # the zombie wakes up
    except Fenced:
        fenced = True
    reader = RunDir(run).checkpoint_index()
    entries = reader.refresh()
    assert reader.seq == newer.seq, f"the newest record is {reader.seq}, not the newer writer's {newer.seq}"
    assert [e.step for e in entries] == [KEEP_RECORDS + 3, KEEP_RECORDS + 2, KEEP_RECORDS + 1, 1]
    unusable = []
    for e in entries:
        try:
            reader.load(e)
        except Corrupt as error:
            unusable.append(f"step {e.step} ({e.file}): {error}")
    assert not unusable, f"the newest record lists checkpoints the zombie destroyed: {unusable}"
    assert fenced, "the zombie committed on top of the newer attempt instead of being fenced"


# --- a real run, stopped and resumed ------------------------------------------------------

SPEC = [
    "--set=checkpoint.keep=1",
    "--set=checkpoint.every_steps=3",
    "--set=device=cpu",
    "--set=threads=1",
    "--set=batch_size=32",
    "--set=epochs=2",
    "--quiet",
]


class Run:
    """The real `runner run` in a subprocess; its output collected by a thread as it comes."""

    def __init__(self, run_dir: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runner", "run", str(JOBS / "digits.toml"), *SPEC,
             f"--set=checkpoint.dir={run_dir}"],
            cwd=run_dir.parent, env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, what: str, until, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            assert self.proc.poll() is None, f"exited {self.proc.returncode} before {what}:\n{self.output}"
            assert time.monotonic() < deadline, f"no {what} in {timeout} s:\n{self.output}"
            time.sleep(0.02)

    def stop(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self.reader.join(10)
        return code


def newest_record(run_dir: Path) -> dict | None:
    records = sorted((run_dir / "checkpoints" / "commits").glob("*.json"))
    for path in reversed(records):  # a record pruned meanwhile: the one before is still newer than we need
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            continue
    return None


def test_a_resumed_run_keeps_the_checkpoint_it_resumed_from_while_it_saves_more(tmp_path: Path) -> None:
    """Mutation: checkpoint.retain without `or e.file == pinned`."""
    run_dir = tmp_path / "run"
    first = Run(run_dir)
    first.wait_for("committed checkpoint", lambda: bool((newest_record(run_dir) or {}).get("checkpoints")))
    code = first.stop()
    assert code == 143, first.output
    stopped = int(re.search(r"stopped by SIGTERM at step (\d+): checkpoint", first.output)[1])

    second = Run(run_dir)
    resumed_line = re.compile(r"resumed from step (\d+) \(epoch \d+, batch \d+\) of (\S+\.pt)")
    second.wait_for("resume line", lambda: resumed_line.search(second.output))
    step, resumed_from = resumed_line.search(second.output).groups()
    assert int(step) == stopped, second.output
    claim_seq = newest_record(run_dir)["seq"]  # the claim is written before the line is printed
    second.wait_for("3 more commits", lambda: newest_record(run_dir)["seq"] >= claim_seq + 3)
    assert second.stop() == 143, second.output

    record = newest_record(run_dir)
    assert record["seq"] >= claim_seq + 3
    assert record["pinned"] == resumed_from
    files = [e["file"] for e in record["checkpoints"]]
    assert resumed_from in files, f"the checkpoint resumed from ({resumed_from}) was pruned; kept: {files}"
    store = RunDir(str(run_dir)).checkpoint_index()
    store.refresh()
    pinned = next(e for e in store.entries if e.file == resumed_from)
    assert store.load(pinned)["state"] is not None and pinned.step == stopped
