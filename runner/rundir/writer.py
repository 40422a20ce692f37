"""Writing checkpoints: the protocol that commits them, fences stale writers, and prunes.

A record is written only after its payload was uploaded and the store confirmed its
size and MD5 (object stores have no rename; this is the GCS-safe way to appear all at
once). The layout and the reading side are checkpoints.CheckpointIndex's.

One writer at a time: a run claims the directory by committing the next record, at a
term of its own (the claim's seq), which outranks every record of an earlier writer. A
stale writer (a zombie pod from an earlier attempt, a Colab runtime that came back) finds
a newer record than its own, before or after writing its next one, and is fenced: it
stops instead of clobbering the new attempt's checkpoints. Each writer writes under names
of its own and deletes only what its term covers, so even a stale writer that cannot yet
see the newer one's files (another FUSE mount of the store, whose directory cache still
lists the old state) replaces and deletes nothing of it; it is fenced at its first commit
once its mount lists the newer claim.
"""

from __future__ import annotations

import io
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from runner import storage, strict_json
from runner.errors import RunFailed
from runner.rundir.checkpoints import CheckpointIndex, Entry, Key, payload_term, record_key, seal

KEEP_RECORDS = 20  # commit records kept (tiny); enough to see any stale writer's seq is gone


class Fenced(RunFailed):
    """Another writer has claimed this run directory since we did."""


def retain(entries: list[Entry], keep: int, pinned: str | None) -> list[Entry]:
    """What retention keeps of `entries` (newest first): the `keep` newest, and always
    `pinned`, the checkpoint this run resumed from, so a bad newer one can fall back to it."""
    return [e for i, e in enumerate(entries) if i < keep or e.file == pinned]


class CheckpointWriter(CheckpointIndex):
    """The run directory's one writer of checkpoints: claims it, commits, prunes."""

    def __init__(self, checkpoints_url: str, keep: int):
        super().__init__(checkpoints_url)
        self.keep = keep
        self.writer = uuid.uuid4().hex[:12]
        self.term = 0  # the seq of this writer's claim, once it has claimed
        self.pinned: str | None = None

    def claim(self, pinned: str | None) -> None:
        """Become this run directory's only writer, on top of the record last read.

        Raises storage.AlreadyExists if another writer committed since `refresh()`;
        the caller reads again and retries.
        """
        self.pinned, term = pinned, self.seq + 1
        key = self._write_record(term, term, "claim")
        # Another writer's record at this seq or above: it read what we read, or more, and was
        # first or as quick. Ours goes (it would outrank that writer's by name alone); the
        # caller reads again and claims above both.
        if any(k[1] >= key[1] and k[2] != self.writer for k in self._keys()):
            _let_go(self._record_url(key))
            raise storage.AlreadyExists(self._record_url(key))
        self.term, self.seq, self.head = term, key[1], key

    def commit(self, payload: bytes, position: dict[str, int]) -> Entry:
        """Upload, verify, then commit one checkpoint; prune what retention lets go."""
        if (newest := max(self._keys(), default=None)) != self.head:
            raise self._fenced(newest)
        file = f"{position['step']:012d}-{self.term}-{uuid.uuid4().hex[:8]}.pt"
        url = storage.join(self.dir, file)
        # The MD5 is computed while the upload runs (hashlib lets go of the GIL): 0.2 s per
        # 134 MB off an emergency save's critical path.
        with ThreadPoolExecutor(1, thread_name_prefix="md5") as hasher:
            md5 = hasher.submit(storage.md5, payload)
            try:
                storage.write_bytes(url, payload)
            except OSError as e:
                # A full disk (h2o-llmstudio #214): free what retention may, then try once more.
                if not storage.out_of_space(e) or not self.free_space():
                    raise
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
        self._commit_list(retain([entry, *self.entries], self.keep, self.pinned), "checkpoint")
        return entry

    def free_space(self) -> bool:
        """Let go of every checkpoint but the newest and the one this run resumed from (never
        those two), committing that first: for a store that is full. Whether anything went."""
        kept = retain(self.entries, 1, self.pinned)
        if len(kept) == len(self.entries):
            return False
        self._commit_list(kept, "free space")
        return True

    def _commit_list(self, entries: list[Entry], kind: str) -> None:
        """Commit `entries` as the checkpoints that exist (the next record), then prune the rest."""
        previous, self.entries = self.entries, entries
        try:
            key = self._write_record(self.term, self.seq + 1, kind)
        except BaseException:
            self.entries = previous
            raise
        self.seq = key[1]
        # Checked after writing too: a newer claim written meanwhile must not lose files to our
        # prune. The same listing then serves the prune.
        records = storage.list_names(self.records)
        if (newest := max(filter(None, map(record_key, records)), default=key)) > key:
            self.entries = previous
            raise self._fenced(newest)
        self.head = key
        self._prune(records)

    def _write_record(self, term: int, seq: int, kind: str) -> Key:
        record = {
            "seq": seq,
            "term": term,
            "kind": kind,
            "writer": self.writer,
            "time": time.time(),
            "pinned": self.pinned,
            "checkpoints": [asdict(e) for e in self.entries],
        }
        data = strict_json.dumps(seal(strict_json.finite(record)), indent=1).encode()
        key = (term, seq, self.writer)
        url = self._record_url(key)
        try:
            storage.write_bytes(url, data, create_only=True)
        except storage.AlreadyExists:
            # Our own name: only a retried upload whose first try did land meets it.
            if storage.read_bytes(url) != data:
                raise
        return key

    def _prune(self, records: list[str]) -> None:
        # Only after the commit (`records`: the records' names, listed since). Whatever the newest
        # record no longer lists goes, including payloads no record ever listed (an upload cut
        # off by a kill) -- but only files of this writer's term or earlier: never a newer
        # writer's, should it be invisible to us.
        listed, ours = {e.file for e in self.entries}, lambda name: _term_of(name) <= self.term
        for name in storage.list_names(self.dir):
            if ((name.endswith(".pt") and name not in listed) or name.startswith(".tmp-")) and ours(name):
                _let_go(storage.join(self.dir, name))
        for name in records:
            key = record_key(name)
            old = key is not None and key[1] <= self.seq - KEEP_RECORDS
            if (old or name.startswith(".tmp-")) and ours(name):
                _let_go(storage.join(self.records, name))

    def _fenced(self, newest: Key | None) -> Fenced:
        seq = f"commit {newest[1]}" if newest else "its records are gone"
        return Fenced(
            f"another run (a newer attempt) has taken over {self.dir} ({seq} is not ours); "
            "this process stops so as not to clobber its checkpoints"
        )


def _term_of(name: str) -> int:
    """The term of the writer of a payload, a record, or a local write's temporary file for
    either (`.tmp-<token>-<name>`: one another writer may be writing now); 0 for names from
    before terms."""
    if name.startswith(".tmp-"):
        name = name.split("-", 2)[2] if name.count("-") >= 2 else ""
    if name.endswith(".json"):
        return key[0] if (key := record_key(name)) else 0
    return payload_term(name)


def _let_go(url: str) -> None:
    """Delete a file retention let go, if it can be now; else the next prune tries again. The
    commit is made by then: a file another mount of the store deleted first (rclone answers
    EIO for it, its listing not yet updated) must not fail it. A refused permission is raised."""
    try:
        storage.delete(url)
    except storage.Denied:
        raise
    except OSError:
        pass


def encode(
    state: dict[str, Any], spec_toml: str, preprocessing: dict[str, Any], data: dict[str, Any] | None = None
) -> bytes:
    """A checkpoint payload: the training state, the resolved spec, what the model is fed
    (data.preprocessing.Preprocessing.to_dict(): input shape, classes, mean, std), the data's
    fingerprint (data.fingerprint.Fingerprint.to_dict(): what a resume compares) and what
    wrote it. Plain containers and tensors only: it loads with torch.load(weights_only=True)."""
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
            "preprocessing": preprocessing,  # since runner 0.1's regrouping; older payloads lack it
            **({"data": data} if data is not None else {}),  # since image folders; older payloads lack it
            "versions": {"runner": __version__, "torch": str(torch.__version__), "python": platform.python_version()},
        },
        buffer,
    )
    return buffer.getvalue()
