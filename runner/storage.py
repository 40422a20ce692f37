"""The only module that touches fsspec: bytes in and out of a run directory.

Run directories are URLs kept as strings all the way down (`pathlib.Path` would turn
`gs://bucket` into `gs:/bucket`), so a local path, `gs://`, `memory://` or any
other fsspec URL behaves the same. GCS goes through gcsfs with the standard
credentials (Application Default Credentials, Workload Identity,
GOOGLE_APPLICATION_CREDENTIALS); STORAGE_EMULATOR_HOST points it at an emulator.
Transient errors (5xx, 429, timeouts, resets) are retried with exponential backoff
inside gcsfs; what still fails reaches the caller.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from typing import Any

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from runner.errors import RunFailed, UserError

# gcsfs sends anything over 50 MB as a resumable upload in 50 MB chunks, a round trip
# each. A checkpoint is in memory already, so up to this size it goes in one request
# (134 MB to fake-gcs-server: 1.3-1.7 s -> 1.1 s); a bigger one keeps chunks, so a failed
# request resends at most one chunk.
GCS_ONE_REQUEST_BYTES = 256 * 2**20


def _is_gcs(url: str) -> bool:
    return url.startswith(("gs://", "gcs://"))


def _fs(url: str) -> tuple[Any, str]:
    if not _is_gcs(url):
        return url_to_fs(url)
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        # gcsfs >= 2026 probes every bucket's type over gRPC, which emulators do not
        # serve: each access would wait out a 60 s timeout. Read when gcsfs loads.
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    import aiohttp

    # Without a read timeout a request whose answer never comes hangs forever (seen
    # with an emulator); with one, it fails as a retriable error and gcsfs retries it.
    return url_to_fs(url, requests_timeout=aiohttp.ClientTimeout(sock_connect=10, sock_read=30))


class AlreadyExists(Exception):
    """A create-only write found the object already there."""


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def write_bytes(url: str, data: bytes, create_only: bool = False) -> None:
    """Write `data` to `url` whole: readers see the old object or the new one, never a part.

    With `create_only`, fail with AlreadyExists if the object exists (on GCS an
    `ifGenerationMatch=0` precondition, checked by the server, so two writers
    cannot both succeed).
    """
    fs, path = _fs(url)
    try:
        if isinstance(fs, LocalFileSystem):
            _write_local(path, data, create_only)
        else:
            # An object store makes an upload visible only once it is complete.
            one_request = {"chunksize": GCS_ONE_REQUEST_BYTES} if _is_gcs(url) else {}
            fs.pipe_file(path, data, mode="create" if create_only else "overwrite", **one_request)
    except FileExistsError:
        raise AlreadyExists(url) from None


def write_output(url: str, data: bytes, option: str = "-o") -> None:
    """Write a file the user named on the command line, or say in one line why it cannot be."""
    try:
        write_bytes(url, data)
    except OSError as e:  # a directory there, or a file where a directory should be
        raise UserError(f"{option} {url}: cannot write it ({e.strerror or e})") from None


def read_bytes(url: str) -> bytes:
    fs, path = _fs(url)
    return fs.cat_file(path)


def read_text(url: str) -> str:
    """A small text file's content, or "" if there is none (yet)."""
    try:
        return read_bytes(url).decode()
    except FileNotFoundError:
        return ""


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def stored_size_and_md5(url: str) -> tuple[int, str | None]:
    """What the store says it holds: size, and the MD5 it computed (None if it keeps none)."""
    fs, path = _fs(url)
    info = fs.info(path)
    digest = info.get("md5Hash")  # GCS: base64 of the binary digest
    if digest:
        import base64

        digest = base64.b64decode(digest).hex()
    return int(info["size"]), digest


def list_names(url: str) -> list[str]:
    """Names (not paths) directly under `url`; [] if there is nothing there."""
    fs, path = _fs(url)
    try:
        entries = fs.ls(path, detail=False, refresh=True)  # another process may have written
    except FileNotFoundError:
        return []
    return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in entries)


def modified(url: str) -> Any:
    fs, path = _fs(url)
    return fs.modified(path)


def exists(url: str) -> bool:
    fs, path = _fs(url)
    return fs.exists(path)


def delete(url: str) -> None:
    fs, path = _fs(url)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path)


def delete_tree(url: str) -> None:
    fs, path = _fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def check_reachable(url: str, what: str = "checkpoint.dir") -> None:
    """Fail with a user error, before anything is written, if `url` cannot be used at all."""
    try:
        fs, path = _fs(url)
    except (ValueError, ImportError) as e:
        raise UserError(f"{what}: cannot use '{url}': {e}") from None
    if isinstance(fs, LocalFileSystem) or "://" not in url:
        return
    root = fs._strip_protocol(url).split("/", 1)[0]
    try:
        found = fs.exists(root)
    except Exception as e:  # credentials, permissions, DNS: the message says which
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{what}: cannot reach '{url}': {first}") from None
    if not found:
        raise UserError(
            f"{what}: bucket '{root}' of '{url}' does not exist or is not visible to these "
            f"credentials; create it (gcloud storage buckets create gs://{root}) or fix {what}"
        )


def failure(url: str, error: OSError) -> UserError | RunFailed:
    """A store error as what it means: the user's to fix (exit 2), or a failure that a
    retry may get past (exit 1; Kubernetes retries it)."""
    refused = isinstance(error, PermissionError | NotADirectoryError | IsADirectoryError)
    if refused or str(error).startswith("Forbidden"):  # gcsfs raises OSError("Forbidden: ...") on 403
        return UserError(f"checkpoint.dir: cannot write to {url}: {error}")
    # A timeout (fsspec's FSTimeoutError, after gcsfs's retries) has no message of its own.
    reason = str(error) or ("no answer in time" if isinstance(error, TimeoutError) else type(error).__name__)
    return RunFailed(f"checkpoint.dir: {url} is unreachable: {reason}")


def _write_local(path: str, data: bytes, create_only: bool) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
    try:
        with open(tmp, "xb") as f:  # honours the umask, unlike mkstemp's 0600
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if create_only:
            os.link(tmp, path)  # atomic, and fails if `path` exists
        else:
            os.replace(tmp, path)  # atomic on POSIX
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
