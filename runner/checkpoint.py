"""Checkpoints in a run directory, and the protocol that commits them.

    <run>/checkpoints/<step>-<token>.pt      payloads: unique names, written once, never changed
    <run>/checkpoints/commits/<seq>.json     commit records, written create-only; newest = highest seq

A checkpoint exists once a commit record lists it, and a record is written only
after its payload was uploaded and the store confirmed its size and MD5 (object
stores have no rename; this is the GCS-safe way to appear all at once). Each record
lists every checkpoint kept, newest first, with size and MD5, so resume can verify
a payload and fall back to the one before if it is corrupt.

One writer at a time: a run claims the directory by committing the next record,
and every commit is create-only on `seq + 1`. A stale writer (a zombie pod from an
earlier attempt) finds its next seq taken, or a newer record than its own, and is
fenced: it stops instead of clobbering the new attempt's checkpoints.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from runner import storage
from runner.errors import RunFailed

KEEP_RECORDS = 20  # commit records kept (tiny); enough to see any stale writer's seq is gone


class Fenced(RunFailed):
    """Another writer has claimed this run directory since we did."""


class Corrupt(Exception):
    """A payload that does not match its commit record, or does not load safely."""


@dataclass(frozen=True)
class Entry:
    file: str
    step: int
    epoch: int
    batch: int
    size: int
    md5: str
    time: float


def retain(entries: list[Entry], keep: int, pinned: str | None) -> list[Entry]:
    """What retention keeps of `entries` (newest first): the `keep` newest, and always
    `pinned`, the checkpoint this run resumed from, so a bad newer one can fall back to it."""
    return [e for i, e in enumerate(entries) if i < keep or e.file == pinned]


class CheckpointStore:
    def __init__(self, run_url: str, keep: int):
        self.dir = storage.join(run_url, "checkpoints")
        self.records = storage.join(self.dir, "commits")
        self.keep = keep
        self.writer = uuid.uuid4().hex[:12]
        self.seq = 0  # the last record this writer saw as newest or wrote
        self.entries: list[Entry] = []  # committed checkpoints, newest first
        self.pinned: str | None = None

    # -- reading -------------------------------------------------------------

    def _newest_seq(self) -> int:
        seqs = [int(n.removesuffix(".json")) for n in storage.list_names(self.records) if n.endswith(".json")]
        return max(seqs, default=0)

    def refresh(self) -> list[Entry]:
        """Read the newest commit record: the committed checkpoints, newest first."""
        self.seq = self._newest_seq()
        if self.seq:
            record = json.loads(storage.read_bytes(self._record_url(self.seq)))
            self.entries = [Entry(**e) for e in record["checkpoints"]]
        else:
            self.entries = []
        return self.entries

    def load(self, entry: Entry) -> dict[str, Any]:
        """A checkpoint's payload, verified against its record, loaded without running code."""
        try:
            data = storage.read_bytes(storage.join(self.dir, entry.file))
        except FileNotFoundError:
            raise Corrupt("its payload is missing") from None
        if len(data) != entry.size or storage.md5(data) != entry.md5:
            raise Corrupt(
                f"{len(data)} bytes with MD5 {storage.md5(data)}, committed as {entry.size} bytes, {entry.md5}"
            )
        import torch

        try:
            # weights_only: tensors and plain containers only; a pickle that would run code is refused.
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:
            lines = str(e).strip().splitlines() or [type(e).__name__]
            reason = next((line.strip() for line in lines if "WeightsUnpickler error" in line), lines[0])
            raise Corrupt(f"it does not load safely ({reason})") from None

    def newest_valid(self, warn: Callable[[str], None]) -> tuple[dict[str, Any], Entry] | None:
        """The newest committed checkpoint that verifies and loads, saying why others were skipped."""
        for entry in self.entries:
            try:
                return self.load(entry), entry
            except Corrupt as e:
                warn(f"checkpoint at step {entry.step} ({entry.file}) is unusable: {e}; falling back")
        return None

    # -- writing -------------------------------------------------------------

    def claim(self, pinned: str | None) -> None:
        """Become this run directory's only writer, on top of the record last read.

        Raises storage.AlreadyExists if another writer committed since `refresh()`;
        the caller reads again and retries.
        """
        self.pinned = pinned
        self._write_record(self.seq + 1, "claim")

    def commit(self, payload: bytes, position: dict[str, int]) -> Entry:
        """Upload, verify, then commit one checkpoint; prune what retention lets go."""
        if (newest := self._newest_seq()) != self.seq:
            raise self._fenced(newest)
        file = f"{position['step']:012d}-{uuid.uuid4().hex[:8]}.pt"
        url = storage.join(self.dir, file)
        # The MD5 is computed while the upload runs (hashlib lets go of the GIL): 0.2 s per
        # 134 MB off an emergency save's critical path.
        with ThreadPoolExecutor(1, thread_name_prefix="md5") as hasher:
            md5 = hasher.submit(storage.md5, payload)
            storage.write_bytes(url, payload)
        entry = Entry(
            file=file,
            step=position["step"],
            epoch=position["epoch"],
            batch=position["batch"],
            size=len(payload),
            md5=md5.result(),
            time=time.time(),
        )
        # Verify before committing: an upload that silently lost bytes must never be pointed to.
        size, digest = storage.stored_size_and_md5(url)
        if size != entry.size or (digest is not None and digest != entry.md5):
            storage.delete(url)
            raise OSError(
                f"the store holds {size} bytes (MD5 {digest}) of {entry.file}, written {entry.size} ({entry.md5})"
            )
        previous = self.entries
        self.entries = retain([entry, *previous], self.keep, self.pinned)
        try:
            self._write_record(self.seq + 1, "checkpoint")
        except storage.AlreadyExists:
            self.entries = previous
            raise self._fenced(self.seq + 1) from None
        except BaseException:
            self.entries = previous
            raise
        self._prune()
        return entry

    def _write_record(self, seq: int, kind: str) -> None:
        record = {
            "seq": seq,
            "kind": kind,
            "writer": self.writer,
            "time": time.time(),
            "pinned": self.pinned,
            "checkpoints": [asdict(e) for e in self.entries],
        }
        data = json.dumps(record, indent=1).encode()
        url = self._record_url(seq)
        try:
            storage.write_bytes(url, data, create_only=True)
        except storage.AlreadyExists:
            # A retried upload whose first try did land looks the same: then it is ours.
            if storage.read_bytes(url) != data:
                raise
        self.seq = seq

    def _prune(self) -> None:
        # Only after the commit: whatever the newest record no longer lists goes, including
        # payloads no record ever listed (an upload cut off by a kill). This writer holds
        # the claim, so no other upload can be in flight here.
        listed = {e.file for e in self.entries}
        for name in storage.list_names(self.dir):
            if (name.endswith(".pt") and name not in listed) or name.startswith(".tmp-"):
                storage.delete(storage.join(self.dir, name))
        for name in storage.list_names(self.records):
            if name.endswith(".json") and int(name.removesuffix(".json")) <= self.seq - KEEP_RECORDS:
                storage.delete(storage.join(self.records, name))

    def _record_url(self, seq: int) -> str:
        return storage.join(self.records, f"{seq:010d}.json")

    def _fenced(self, seq: int) -> Fenced:
        return Fenced(
            f"another run (a newer attempt) has taken over {self.dir}: commit {seq} is not ours; "
            "this process stops so as not to clobber its checkpoints"
        )


def encode(state: dict[str, Any], spec_toml: str) -> bytes:
    """A checkpoint payload: the training state, the resolved spec, and what wrote it."""
    import hashlib
    import platform

    import torch

    from runner import __version__

    buffer = io.BytesIO()
    torch.save(
        {
            "format": 1,
            "state": state,
            "spec": spec_toml,
            "spec_sha256": hashlib.sha256(spec_toml.encode()).hexdigest(),
            "versions": {"runner": __version__, "torch": str(torch.__version__), "python": platform.python_version()},
        },
        buffer,
    )
    return buffer.getvalue()
