"""Committed checkpoints in a run directory, read-only: what they are, and loading one verified.

    <run>/checkpoints/<step>-<term>-<token>.pt                 payloads: unique names, written once
    <run>/checkpoints/commits/<term>-<seq>-<writer>.json       commit records, one name per writer

A checkpoint exists once a commit record lists it; each record lists every checkpoint
kept, newest first, with size and MD5, so a reader verifies a payload before using it
and falls back to the one before if it is corrupt. A record carries the MD5 of its own
content too: on a file system without hard links (a FUSE mount) a record is created
first and written after, so a reader can meet one empty or cut off by a kill, and such a
record never counts (the reader takes the newest record that verifies). Readers (`ls`,
`status`, `eval`, resume) use this index; only writer.CheckpointWriter commits and prunes.

The newest record is the one with the highest (term, seq, writer), the order of the names.
`term` is the seq of the claim its writer made: a later claim outranks every record of an
earlier writer, whatever their seqs. No two writers ever write one name, so no record is
replaced even where create-only cannot be enforced between writers: two FUSE mounts of one
store don't see each other's files being created (gcsfuse #305), and the last upload of a
name wins. Records named `<seq>.json` (runner before 0.2) are term 0.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runner import storage

RECORDS = "commits"


Key = tuple[int, int, str]  # (term, seq, writer) of a commit record: newest is highest


def record_key(name: str) -> Key | None:
    """The (term, seq, writer) of a commit record's file name, or None for anything else: a
    local write's temporary file (`.tmp-<token>-<name>`, there while it is written, or left
    by a process killed mid-write) is not a record, and must not stop a reader."""
    stem = name.removesuffix(".json")
    parts = stem.split("-")
    if not name.endswith(".json") or name.startswith("."):
        return None
    if len(parts) == 1 and stem.isdigit():  # before writers had names of their own
        return 0, int(stem), ""
    if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit() and parts[2].isalnum():
        return int(parts[0]), int(parts[1]), parts[2]
    return None


def record_name(key: Key) -> str:
    """The file name of the commit record `key`; names sort as their keys do."""
    term, seq, writer = key
    return f"{term:010d}-{seq:010d}-{writer}.json"


def record_seq(name: str) -> int | None:
    """The sequence number of a record named `<seq>.json` (promotion records; commit records
    before 0.2), or None for anything else (a temporary file among them, `.tmp-...`)."""
    stem = name.removesuffix(".json")
    return int(stem) if name.endswith(".json") and stem.isdigit() else None


def payload_term(name: str) -> int:
    """The term of the writer that uploaded payload `name` (`<step>-<term>-<token>.pt`); 0
    for a payload from before terms (`<step>-<token>.pt`)."""
    parts = name.removesuffix(".pt").split("-")
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else 0


def seal(record: dict[str, Any]) -> dict[str, Any]:
    """`record` with the MD5 of its canonical JSON added (key "md5"): what `opened` checks."""
    if "md5" in record:  # it would be overwritten, and the record never verify
        raise ValueError("a record to seal has a key 'md5' of its own")
    return {**record, "md5": storage.md5(_canonical(record))}


def opened(data: bytes) -> dict[str, Any] | None:
    """The commit record in `data`, or None if it is not one whole, sealed record (empty, cut
    off, or not what was sealed). Records from before sealing (no "md5") are taken as they parse."""
    record = unsealed(data, sealed_only=False)
    return record if record is not None and isinstance(record.get("checkpoints"), list) else None


def unsealed(data: bytes, sealed_only: bool = True) -> dict[str, Any] | None:
    """The JSON object in `data` without its seal, or None if it is not one whole object whose
    MD5 matches its seal (`sealed_only`: one without a seal is None too). Any record `seal` wrote."""
    try:
        record = json.loads(data)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError both
        return None
    if not isinstance(record, dict):
        return None
    md5 = record.pop("md5", None)
    if md5 is None:
        return None if sealed_only else record
    return record if md5 == storage.md5(_canonical(record)) else None


def _canonical(record: dict[str, Any]) -> bytes:
    # Sorted keys and no spaces: the same bytes from the record as written and as read back
    # (JSON round-trips floats exactly).
    return json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


class Corrupt(Exception):
    """A payload that does not match its commit record, or does not load safely."""


@dataclass(frozen=True)
class Entry:
    """One committed checkpoint: its file under checkpoints/, its position, size (bytes), MD5 (hex)
    and commit time (Unix seconds)."""

    file: str
    step: int
    epoch: int
    batch: int
    size: int
    md5: str
    time: float


class CheckpointIndex:
    def __init__(self, checkpoints_url: str):
        self.dir = checkpoints_url
        self.records = storage.join(self.dir, RECORDS)
        # The highest seq of any record, whole or not: a writer's next commit goes above it.
        self.seq = 0
        self.head: Key | None = None  # the newest record's key, whole or not
        self.entries: list[Entry] = []  # committed checkpoints (of the newest whole record), newest first

    def _keys(self) -> list[Key]:
        return sorted(key for name in storage.list_names(self.records) if (key := record_key(name)) is not None)

    def refresh(self) -> list[Entry]:
        """Read the newest commit record that verifies: the committed checkpoints, newest first."""
        keys = self._keys()
        self.seq, self.head, self.entries = max((k[1] for k in keys), default=0), max(keys, default=None), []
        for key in reversed(keys):
            try:
                record = opened(storage.read_bytes(self._record_url(key)))
            except FileNotFoundError:  # pruned by the writer since the listing
                continue
            if record is not None:
                self.entries = [Entry(**e) for e in record["checkpoints"]]
                break
        return self.entries

    def load(self, entry: Entry) -> dict[str, Any]:
        """A checkpoint's payload, verified against its record, loaded without running code."""
        try:
            data = storage.read_bytes(self.url_of(entry))
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

    def url_of(self, entry: Entry) -> str:
        """Where `entry`'s payload is."""
        return storage.join(self.dir, entry.file)

    def _record_url(self, key: Key) -> str:
        return storage.join(self.records, record_name(key) if key[0] else f"{key[1]:010d}.json")
