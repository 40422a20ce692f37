"""Which mount a local path lives on: FUSE mounts (Colab's Drive, gcsfuse, rclone) keep
directory listings in caches of their own, so two mounts of one store see each other's new
files late. Linux only (/proc/self/mountinfo); elsewhere nothing is known."""

from __future__ import annotations

import os
import re


def fuse_type(path: str, mountinfo: str | None = None) -> str | None:
    """The file system type (such as `fuse.rclone`) if `path` is on a FUSE mount, else None.

    `mountinfo`: the text of /proc/self/mountinfo (read when None; None where unreadable).
    Its format (proc(5)): the mount point is field 5, octal-escaped; the type follows " - ".
    """
    if mountinfo is None:
        try:
            with open("/proc/self/mountinfo") as f:
                mountinfo = f.read()
        except OSError:
            return None
    target = os.path.realpath(path)  # a path not there yet resolves as far as it exists
    best: tuple[int, str] | None = None
    for line in mountinfo.splitlines():
        fields, _, rest = line.partition(" - ")
        parts, kind = fields.split(), rest.split()[:1]
        if len(parts) < 5 or not kind:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), parts[4])  # \040 is a space
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) > best[0]):
            best = len(point), kind[0]
    return best[1] if best and best[1].startswith("fuse") else None
