"""A local copy of remote data files, fetched once and kept current.

Each data root (a `gs://` URL, or any fsspec URL) has a folder in the cache holding
its files under their own names, and `index.json`: each file's version as the store
lists it (GCS's generation, else MD5 or ETag). A file is fetched when its version is
not the one on record, so a second run fetches only what was added or rewritten,
and files gone from the store go from the cache. The index is written after the
files it records, so a run killed mid-download re-fetches what it had not finished.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from dataclasses import dataclass

from runner import storage
from runner.errors import RunFailed, UserError

INDEX = "index.json"
LOCK = ".lock"
FILES = "files"


def default_dir() -> str:
    """$XDG_CACHE_HOME/runner/data, or ~/.cache/runner/data."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "runner", "data")


@dataclass(frozen=True)
class Synced:
    dir: str  # the local copy of the root: its files at their relative paths
    files: list[tuple[str, int, str]]  # (relative path, size, version), as listed
    fetched: int  # how many files were downloaded now
    fetched_bytes: int

    def note(self) -> str:
        """One line for the run's log."""
        rest = "the rest cached" if self.fetched < len(self.files) else "none was cached"
        return (
            f"data: {self.fetched:,} of {len(self.files):,} files downloaded ({_size(self.fetched_bytes)}), "
            f"{rest} in {self.dir}"
        )


def sync(root: str, cache: str) -> Synced:
    """Make the cache's copy of `root` current; what it holds, and what it took. Raises UserError
    if `root` holds nothing, RunFailed if a file arrived other than listed."""
    storage.check_reachable(root, "data.root")  # no bucket, no permission, no network: one line, before the cache
    folder = os.path.join(cache or default_dir(), hashlib.sha256(root.rstrip("/").encode()).hexdigest()[:16])
    os.makedirs(folder, exist_ok=True)
    # One process at a time per root: the processes of a torchrun job on one machine share the
    # cache; the first fetches, the others wait and find it current.
    with open(os.path.join(folder, LOCK), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _sync(root, folder)


def _sync(root: str, folder: str) -> Synced:
    try:
        files = storage.list_files(root)
    except OSError as e:
        if isinstance(e, storage.Denied):
            raise
        raise RunFailed(f"data.root: could not list {root}: {e}") from None
    if not files:
        raise UserError(f"data.root: no files under {root}; put one folder per class of images there")
    index_path = os.path.join(folder, INDEX)
    try:
        with open(index_path) as f:
            index = json.load(f)
    except (FileNotFoundError, ValueError):
        index = {}
    listed = {rel: version for rel, _, version in files}
    for rel in set(index) - set(listed):  # gone from the store
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(folder, FILES, rel))
    stale = [(rel, size) for rel, size, version in files if index.get(rel) != version or not _has(folder, rel, size)]
    try:
        storage.download([(storage.join(root, rel), os.path.join(folder, FILES, rel)) for rel, _ in stale])
    except OSError as e:
        if isinstance(e, storage.Denied):
            raise
        raise RunFailed(f"data.root: could not download from {root}: {e}") from None
    for rel, size in stale:  # verify before recording (pytorch #183878: a store dropped bytes)
        if not _has(folder, rel, size):
            raise RunFailed(f"data.root: {storage.join(root, rel)} arrived incomplete; run again to fetch it again")
    tmp = index_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(listed, f)
    os.replace(tmp, index_path)
    return Synced(os.path.join(folder, FILES), files, len(stale), sum(size for _, size in stale))


def _has(folder: str, rel: str, size: int) -> bool:
    try:
        return os.path.getsize(os.path.join(folder, FILES, rel)) == size
    except OSError:
        return False


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"
