"""The only module that touches fsspec: bytes in and out of a run directory.

Run directories are URLs kept as strings all the way down (`pathlib.Path` would turn
`gs://bucket` into `gs:/bucket`), so a local path, `gs://`, `memory://` or any
other fsspec URL behaves the same. GCS goes through gcsfs with the standard
credentials (Application Default Credentials, Workload Identity,
GOOGLE_APPLICATION_CREDENTIALS); STORAGE_EMULATOR_HOST points it at an emulator.
Transient errors (5xx, 429, timeouts, resets) are retried with exponential backoff
inside gcsfs; what still fails reaches the caller.

Object permissions are all runner needs on a bucket (roles/storage.objectAdmin: objects
create, get, list, delete), never the bucket's metadata (storage.buckets.get) or the
project's bucket list: a careful user grants no more. A permission the store refuses
(HTTP 403) is raised as `Denied`, naming it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import uuid
from collections.abc import Iterator
from typing import Any

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from runner.errors import RunFailed, UserError

# gcsfs logs each exhausted retry with a full traceback (216 lines for one store outage);
# runner says what failed in one line. A NullHandler keeps them from Python's last-resort
# stderr handler (a run routes them to log.txt: training/library_logs.py; a user's own
# logging configuration still gets them).
LIBRARY_LOGGERS = ("gcsfs", "fsspec")
for _name in LIBRARY_LOGGERS:
    logging.getLogger(_name).addHandler(logging.NullHandler())

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


class Denied(UserError, PermissionError):
    """The store refused these credentials a permission (GCS: HTTP 403), named in the message.

    A UserError (exit 2: retrying cannot help, granting can), and an OSError, so code that
    handles store errors sees it as one. `what`: the setting or argument the URL came from.
    """

    def __init__(self, message: str, what: str = ""):
        super().__init__(f"{what}: {message}" if what else message)
        self.what = what


# The permissions of GCS's object roles that runner uses. Overwriting an object needs
# storage.objects.delete as well as create; GCS's 403 names the one refused.
LIST = "storage.objects.list"
GET = "storage.objects.get"
CREATE = "storage.objects.create"
DELETE = "storage.objects.delete"


def _refused(error: BaseException) -> bool:
    return isinstance(error, OSError) and str(error).startswith("Forbidden")  # gcsfs: OSError("Forbidden: ...")


def _denied(url: str, error: OSError, permission: str, what: str = "") -> Denied:
    # GCS's message says which: "... does not have storage.objects.list access to ...".
    named = re.search(r"\bstorage\.[a-z]+\.[a-zA-Z]+", str(error))
    permission = named.group(0) if named else permission
    bucket = url.split("://", 1)[-1].split("/", 1)[0]
    return Denied(
        f"{url}: these credentials lack {permission} (403 Forbidden); grant it on gs://{bucket} "
        "(roles/storage.objectAdmin holds every permission runner uses) or use other credentials",
        what,
    )


@contextlib.contextmanager
def _needs(url: str, permission: str) -> Iterator[None]:
    """Raise a 403 inside as Denied: `permission` if GCS's message does not name another."""
    try:
        yield
    except OSError as e:
        if not _refused(e):
            raise
        raise _denied(url, e, permission) from None


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
            with _needs(url, CREATE):
                fs.pipe_file(path, data, mode="create" if create_only else "overwrite", **one_request)
    except FileExistsError:
        raise AlreadyExists(url) from None


def append_bytes(url: str, data: bytes, written: int) -> None:
    """Make the file at `url` hold `data`, whose first `written` bytes an earlier call put there:
    a file that only grows, such as a TensorBoard event file.

    A local file gets the new bytes appended, so a reader that keeps it open sees it grow
    (TensorBoard's data server does, and never sees a file replaced by a rename: it reads the
    old one on). Where appending is refused (a FUSE mount such as rclone's without its write
    cache) or the file is not what `written` says, it is written whole like any other. Objects
    in a bucket cannot be appended to: there the object is rewritten whole (`write_bytes`).
    """
    fs, path = _fs(url)
    if isinstance(fs, LocalFileSystem):
        try:
            if _append_local(path, data, written):
                return
        except OSError as e:
            if out_of_space(e):
                raise
    write_bytes(url, data)


def write_output(url: str, data: bytes, option: str = "-o") -> None:
    """Write a file the user named on the command line, or say in one line why it cannot be."""
    try:
        write_bytes(url, data)
    except Denied:
        raise  # it names the permission
    except OSError as e:  # a directory there, or a file where a directory should be
        raise UserError(f"{option} {url}: cannot write it ({e.strerror or e})") from None


def read_bytes(url: str) -> bytes:
    fs, path = _fs(url)
    with _needs(url, GET):
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
    with _needs(url, GET):
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
        with _needs(url, LIST):  # at a bucket's root too: objects.list, not the bucket's metadata
            entries = fs.ls(path, detail=False, refresh=True)  # another process may have written
    except FileNotFoundError:
        return []
    return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in entries)


def is_local(url: str) -> bool:
    """Whether `url` is a path on this machine's file system (a FUSE mount counts)."""
    return isinstance(_fs(url)[0], LocalFileSystem)


def list_files(url: str) -> list[tuple[str, int, str]]:
    """Every file below `url`, as (path relative to `url`, size in bytes, version), sorted by path.

    The version changes whenever the content may have: GCS's generation (a new one on every
    write), else the store's MD5 or ETag, else size and modification time. [] if nothing is there.
    """
    fs, path = _fs(url)
    try:
        with _needs(url, LIST):
            found = fs.find(path, detail=True)
    except FileNotFoundError:
        return []
    base = fs._strip_protocol(url).rstrip("/") + "/"
    files = []
    for name, info in found.items():
        if info.get("type") == "directory" or not name.startswith(base):
            continue
        version = info.get("generation") or info.get("md5Hash") or info.get("ETag") or info.get("etag")
        if not version:  # a local file, or a store that keeps no version: what changes with a rewrite
            version = f"{info.get('size')}:{info.get('mtime') or info.get('created')}"
        files.append((name[len(base) :], int(info.get("size") or 0), str(version)))
    return sorted(files)


def download(pairs: list[tuple[str, str]]) -> None:
    """Copy each (URL, local path) pair to this machine, several at a time (fsspec's batched get).
    All URLs must be on one store."""
    if not pairs:
        return
    fs, _ = _fs(pairs[0][0])
    for _, local in pairs:
        os.makedirs(os.path.dirname(local) or ".", exist_ok=True)
    with _needs(pairs[0][0], GET):
        fs.get([fs._strip_protocol(url) for url, _ in pairs], [local for _, local in pairs])


def _object(url: str) -> tuple[Any, str]:
    """The store and path of an object (or a prefix of objects) at `url`, never a bucket itself:
    gcsfs would read a bucket's metadata (storage.buckets.get) or, deleting, delete the bucket."""
    fs, path = _fs(url)
    if _is_gcs(url) and not fs.split_path(path)[1]:
        raise ValueError(f"{url} is a bucket, not an object in one")
    return fs, path


def modified(url: str) -> Any:
    fs, path = _object(url)
    with _needs(url, GET):
        return fs.modified(path)


def exists(url: str) -> bool:
    fs, path = _object(url)
    with _needs(url, GET):  # objects.get, or objects.list for a prefix
        return fs.exists(path)


def delete(url: str) -> None:
    fs, path = _object(url)
    with contextlib.suppress(FileNotFoundError), _needs(url, DELETE):
        fs.rm(path)


def delete_tree(url: str) -> None:
    """Delete the object at `url` and every object under it (on GCS: objects.list, objects.delete)."""
    fs, path = _object(url)
    with _needs(url, DELETE):
        if fs.exists(path):
            fs.rm(path, recursive=True)


def check_reachable(url: str, what: str) -> None:
    """Fail with a user error, before anything is written, if `url` cannot be used at all. `what`:
    the setting or argument `url` came from (checkpoint.dir, RUN), named in the message."""
    try:
        fs, path = _fs(url)
    except (ValueError, ImportError) as e:
        raise UserError(f"{what}: cannot use '{url}': {e}") from None
    if isinstance(fs, LocalFileSystem) or "://" not in url:
        return
    root = fs._strip_protocol(url).split("/", 1)[0]
    try:
        if _is_gcs(url):
            # One object name under the prefix (objects.list), what every use of a run directory
            # needs anyway: [] is fine (a first run), 404 means there is no bucket. Not
            # fs.exists(bucket): that asks for the bucket's metadata (storage.buckets.get), which
            # the object roles lack, and gcsfs reads an empty bucket then as none (gcsfs #462).
            bucket, key, _ = fs.split_path(path)
            prefix = key.rstrip("/") + "/" if key.strip("/") else None
            fs.call("GET", "b/{}/o", bucket, json_out=True, prefix=prefix, maxResults=1)
            found = True
        else:
            found = fs.exists(root)
    except FileNotFoundError:
        found = False
    except Exception as e:  # credentials, permissions, DNS: the message says which
        if _refused(e):
            raise _denied(url, e, LIST, what) from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{what}: cannot reach '{url}': {first}") from None
    if not found:
        # GCS's object listing answers 404 only for a bucket that does not exist; other stores' exists() may
        # also say no for one these credentials cannot see.
        hedge = "" if _is_gcs(url) else " or is not visible to these credentials"
        raise UserError(
            f"{what}: bucket '{root}' of '{url}' does not exist{hedge}; create it "
            f"(gcloud storage buckets create gs://{root}) or fix {what}"
        )


def out_of_space(error: BaseException) -> bool:
    """Whether `error` says the store is full: no space left on the device, or a disk quota."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def failure(url: str, error: OSError, what: str) -> UserError | RunFailed:
    """A store error as what it means: the user's to fix (exit 2), or a failure that a retry
    may get past (exit 1; Kubernetes retries it), named after `what` (as check_reachable)."""
    if _refused(error):  # a 403 from outside this module's functions: still one line
        return _denied(url, error, "a permission on the bucket", what)
    if isinstance(error, Denied):  # it names the object and the permission
        return error if error.what else Denied(str(error), what)
    if isinstance(error, PermissionError | NotADirectoryError | IsADirectoryError):
        return UserError(f"{what}: cannot write to {url}: {error}")
    if out_of_space(error):
        fewer = ", or keep fewer checkpoints (checkpoint.keep)" if what == "checkpoint.dir" else ""
        return RunFailed(f"{what}: no space left on {url} ({error.strerror}); free space there{fewer}")
    # A timeout (fsspec's FSTimeoutError, after gcsfs's retries) has no message of its own.
    reason = str(error) or ("no answer in time" if isinstance(error, TimeoutError) else type(error).__name__)
    return RunFailed(f"{what}: {url} is unreachable: {reason}")


# What link(2) says on a file system without hard links: FUSE mounts (Google Drive in
# Colab, gcsfuse, rclone: EIO, EPERM or ENOSYS), and others (ENOTSUP/EOPNOTSUPP).
NO_HARD_LINKS = {errno.EIO, errno.EPERM, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK}


def _write_local(path: str, data: bytes, create_only: bool) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
    try:
        _create_exclusive(tmp, data)
        if not create_only:
            os.replace(tmp, path)  # atomic on POSIX; a rename, never a rewrite in place (some mounts refuse that)
            return
        try:
            os.link(tmp, path)  # atomic, and fails if `path` exists
        except OSError as e:
            if e.errno not in NO_HARD_LINKS:
                raise
            _create_exclusive(path, data)  # found by trying: no guessing the file system from its path
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _append_local(path: str, data: bytes, written: int) -> bool:
    """Append `data[written:]` to the file at `path` if it is `written` bytes long; whether it was."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "ab") as f:  # positioned at the end
        if f.tell() != written:  # gone, or left longer by an append that failed part-way
            return False
        f.write(data[written:])
        f.flush()
        os.fsync(f.fileno())
    return True


def _create_exclusive(path: str, data: bytes) -> None:
    """Create `path` holding `data`, failing with FileExistsError if it exists: open's "x" is
    O_EXCL, which FUSE mounts pass to their daemon. Used for temporary files, and as the
    create-only write where link(2) is missing. Not all at once: a reader can meet the file
    empty or part-written, and a writer killed here leaves it so; hence the only create-only
    files, commit records, carry a checksum and readers skip one that does not verify
    (checkpoints.CheckpointIndex.refresh)."""
    with open(path, "xb") as f:  # honours the umask, unlike mkstemp's 0600
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
