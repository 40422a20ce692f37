"""The only module that touches fsspec: bytes in and out of a run directory.

Run directories are URLs kept as strings all the way down (`pathlib.Path` would turn
`gs://bucket` into `gs:/bucket`), so a local path, `gs://`, `memory://` or any
other fsspec URL behaves the same.
"""

from __future__ import annotations

import os
import uuid

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def write_bytes(url: str, data: bytes) -> None:
    """Write `data` to `url` whole: readers see the old file or the new one, never a part."""
    fs, path = url_to_fs(url)
    if isinstance(fs, LocalFileSystem):
        _replace_local(path, data)
    else:
        fs.pipe_file(path, data)  # an object store makes an upload visible only once complete


def read_bytes(url: str) -> bytes:
    fs, path = url_to_fs(url)
    return fs.cat_file(path)


def exists(url: str) -> bool:
    fs, path = url_to_fs(url)
    return fs.exists(path)


def _replace_local(path: str, data: bytes) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
    try:
        with open(tmp, "xb") as f:  # honours the umask, unlike mkstemp's 0600
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
