"""What a run's data was: a fingerprint small enough to travel in every checkpoint.

A digest per class (its name, how many samples, and a hash of their content in order)
and one over all classes. An image folder's is over its files (class folder, name,
size, content hash); a built-in data set's over its decoded tensors. Either way it
names content, not where the data lies or when it was copied, so moving the data is
no change and renaming a class folder is exactly one. `changes` says what differs,
in words, for the one line a resumed run refuses changed data with. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

DIGEST_HEX = 16  # 64 bits per class: enough to tell data sets apart, short in JSON


@dataclass(frozen=True)
class Fingerprint:
    digest: str  # over every class's name and digest
    samples: int  # files (image folder) or samples (built-in), all splits
    size: int  # bytes: of the files, or of the decoded tensors
    per_class: dict[str, tuple[int, str]] = field(default_factory=dict)  # class -> (samples, digest)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types: for a checkpoint (loads with weights_only), metadata and status.json."""
        return {
            "digest": self.digest,
            "samples": self.samples,
            "bytes": self.size,
            "per_class": {name: [n, d] for name, (n, d) in self.per_class.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Fingerprint:
        per_class = {str(name): (int(n), str(digest)) for name, (n, digest) in d.get("per_class", {}).items()}
        return cls(str(d["digest"]), int(d["samples"]), int(d["bytes"]), per_class)


def _hex(parts: Iterable[bytes]) -> str:
    h = hashlib.blake2b(digest_size=DIGEST_HEX // 2)
    for part in parts:
        h.update(len(part).to_bytes(8, "little") + part)  # length-prefixed: no two lists hash alike
    return h.hexdigest()


def _combine(per_class: dict[str, tuple[int, str]], samples: int, size: int) -> Fingerprint:
    digest = _hex(f"{name}\0{n}\0{d}".encode() for name, (n, d) in sorted(per_class.items()))
    return Fingerprint(digest, samples, size, dict(sorted(per_class.items())))


def of_files(files: Iterable[tuple[str, str, int, str]]) -> Fingerprint:
    """From (class, name within the split and class folder, size, content hash) of every file."""
    by_class: dict[str, list[tuple[str, int, str]]] = {}
    for cls, name, size, content in files:
        by_class.setdefault(cls, []).append((name, size, content))
    per_class = {
        cls: (len(entries), _hex(f"{n}\0{s}\0{c}".encode() for n, s, c in sorted(entries)))
        for cls, entries in by_class.items()
    }
    return _combine(
        per_class, sum(n for n, _ in per_class.values()), sum(s for e in by_class.values() for _, s, _ in e)
    )


def of_tensors(x: torch.Tensor, y: torch.Tensor, classes: tuple[str, ...]) -> Fingerprint:
    """From decoded samples x (N, C, H, W) uint8 and labels y (N,): each class's samples in order."""
    per_class = {}
    for label, name in enumerate(classes):
        picked = x[y == label].contiguous()
        per_class[name] = (len(picked), _hex([picked.numpy().tobytes()]))
    return _combine(per_class, len(y), x.numel() * x.element_size())


def same_classes(old: Fingerprint, new: Fingerprint) -> bool:
    """Whether both name the same classes. Each output of a network is one class by its place
    among the sorted names, so a class renamed, added or removed changes what the outputs mean,
    even where their number stays."""
    return sorted(old.per_class) == sorted(new.per_class)


def changes(old: Fingerprint, new: Fingerprint) -> list[str]:
    """What differs from `old` to `new`, in words ([] if nothing): renamed, added and removed
    classes, and classes whose files changed (with their counts)."""
    if old.digest == new.digest:
        return []
    gone = [c for c in old.per_class if c not in new.per_class]
    came = [c for c in new.per_class if c not in old.per_class]
    said = []
    for cls in list(gone):
        twin = next((c for c in came if new.per_class[c] == old.per_class[cls]), None)
        if twin is not None:  # the same files under another name
            said.append(f"classes: renamed '{cls}' -> '{twin}'")
            gone.remove(cls)
            came.remove(twin)
    said += [f"class '{c}' removed ({old.per_class[c][0]} samples)" for c in gone]
    said += [f"class '{c}' added ({new.per_class[c][0]} samples)" for c in came]
    for cls, (n, digest) in old.per_class.items():
        if cls in new.per_class and new.per_class[cls][1] != digest:
            m = new.per_class[cls][0]
            count = f"{n} -> {m} samples" if m != n else f"{n} samples, some changed"
            said.append(f"class '{cls}': {count}")
    return said or [f"the data's digest ({old.digest} -> {new.digest})"]
