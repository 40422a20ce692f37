"""Image files of the user's own: torchvision's ImageFolder layout, as uint8 tensors.

    root/<class>/<image>                         one folder: the test split drawn by seed
    root/train/<class>/<image>, root/test/...    split as given (and root/val/... if there)

`root` is a local path or a URL (gs://...); a URL's files are copied to a local cache
first (data/cache.py). Every image (PNG, JPEG, ...; any size or mode) becomes pixels
exactly as `runner predict` makes them (data/pixels.py), decoded by a pool of threads
(Pillow releases the GIL while it decodes and resizes). Before decoding, the memory the
tensors will take is checked against what this process may use. Unreadable images are
skipped and counted, or refused with data.strict. Class names are the folder names,
sorted, as torchvision's ImageFolder sorts them; hidden folders and files (.ipynb_checkpoints,
.DS_Store, __MACOSX) are neither classes nor samples, and the log's one line names what
was passed over.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from runner import storage
from runner.data import cache, fingerprint
from runner.data.splits import Loaded, Options, Split
from runner.device import cpu_budget
from runner.errors import UserError

if TYPE_CHECKING:
    import numpy as np

# torchvision's IMG_EXTENSIONS: other files (a README, notes.txt) are not images and are passed over.
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")
SHOWN = 3  # files named in a log line (unreadable, passed over)
# Loading holds the decoded images and the stacked tensor, and the splits copy it once more.
PEAK_COPIES = 3


@dataclass(frozen=True)
class File:
    split: str  # "train", "val", "test"; "" in a single folder
    cls: str
    name: str  # below the class folder
    path: str  # on this machine
    size: int


def hidden(name: str) -> bool:
    """A name no user means as data: dot-names (.ipynb_checkpoints, which Jupyter and Colab make
    in every folder they open, .DS_Store, .git) and __MACOSX (what macOS's zip adds)."""
    return name.startswith(".") or name == "__MACOSX"


def find_files(root: str, rels: Sequence[tuple[str, int]]) -> tuple[list[File], str]:
    """The image files among `rels` (path relative to `root` with "/", size), by split and class,
    and a line naming what was passed over ("" if nothing) (pure). Raises UserError for a layout
    that is neither form.

    As torchvision's ImageFolder reads a folder (class folders sorted, files by IMG_EXTENSIONS),
    and hidden entries (`hidden`) are neither classes nor samples: mmpretrain #507, where a
    Jupyter checkpoint folder became a class."""
    parts = [(rel.split("/"), size) for rel, size in rels]
    hidden_entries: dict[str, int] = {}  # the hidden folder or file -> files under it
    not_images, images = [], []
    for p, size in parts:
        at = next((i for i, name in enumerate(p) if hidden(name)), None)
        if at is not None:
            entry = "/".join(p[: at + 1]) + ("/" if at < len(p) - 1 else "")
            hidden_entries[entry] = hidden_entries.get(entry, 0) + 1
        elif p[-1].lower().endswith(EXTENSIONS):
            images.append((p, size))
        else:
            not_images.append("/".join(p))
    split_layout = {"train", "test"} <= {p[0] for p, _ in images if len(p) >= 3}
    found, outside = [], []
    for p, size in images:
        if split_layout and p[0] in SPLITS and len(p) >= 3:
            found.append(File(p[0], p[1], "/".join(p[2:]), os.path.join(root, *p), size))
        elif not split_layout and len(p) >= 2:
            found.append(File("", p[0], "/".join(p[1:]), os.path.join(root, *p), size))
        else:
            outside.append("/".join(p))
    if not found:
        raise UserError(
            f"data.root: no images in class folders under {root}; lay them out as {root}/<class>/<image> "
            f"(or {root}/train/<class>/... and {root}/test/<class>/...)"
        )
    classes = sorted({f.cls for f in found})
    if len(classes) < 2:  # it would train, to a model that answers the one class it knows
        raise UserError(
            f"data.root: one class folder ({classes[0]!r}) under {root}; a classifier needs two or more: "
            f"put each class's images in a folder of its own, {root}/<class>/<image>"
        )
    return sorted(found, key=lambda f: (f.split, f.cls, f.name)), _passed_over(hidden_entries, not_images, outside)


def _passed_over(hidden_entries: dict[str, int], not_images: list[str], outside: list[str]) -> str:
    """One line: the hidden entries by name, the rest counted with the first few named."""
    said = [
        f"{name} (hidden{f', {_count(n)}' if name.endswith('/') else ''})"
        for name, n in sorted(hidden_entries.items())[:SHOWN]
    ]
    if len(hidden_entries) > SHOWN:
        said.append(f"{len(hidden_entries) - SHOWN} more hidden")
    if not_images:
        said.append(f"{_files(not_images)} that {'is' if len(not_images) == 1 else 'are'} not images")
    if outside:
        said.append(f"{_files(outside)} outside the class folders")
    return f"data: passed over {', '.join(said)}" if said else ""


def _files(names: list[str]) -> str:
    """ "3 files (a, b, c, ...)": how many, the first few named."""
    shown = ", ".join(names[:SHOWN]) + (", ..." if len(names) > SHOWN else "")
    return f"{_count(len(names))} ({shown})"


def _count(n: int) -> str:
    return f"{n} file{'' if n == 1 else 's'}"


def memory_available() -> int | None:
    """Bytes this process may still take: the lesser of the machine's MemAvailable and what the
    cgroup (a container's limit) leaves; None if neither can be read."""
    limits = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f, open("/sys/fs/cgroup/memory.current") as g:
            limit = f.read().strip()
            if limit != "max":
                limits.append(int(limit) - int(g.read().strip()))
    except (OSError, ValueError):
        pass
    return min(limits) if limits else None


def check_memory(images: int, shape: tuple[int, int, int], available: int | None) -> None:
    """UserError, before anything is decoded, if `images` of `shape` (C, H, W) as uint8 would not
    fit in `available` bytes (pure)."""
    c, h, w = shape
    tensors = images * c * h * w
    needed = tensors * PEAK_COPIES
    if available is None or needed <= available:
        return
    raise UserError(
        f"data: {images:,} images at {c}x{h}x{w} take {_gb(tensors)} as uint8 tensors and about {_gb(needed)} "
        f"to load, more than the {_gb(available)} this machine has free; lower data.image_size (now {h}x{w})"
        + (", set data.channels = 1" if c > 1 else "")
        + ", use fewer images, or run where there is more memory (resources.memory)"
    )


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def decode(path: str, shape: tuple[int, int, int]) -> tuple[np.ndarray | None, str, str]:
    """One file: (pixels (C, H, W) uint8 or None if unreadable, content hash, why unreadable)."""
    from PIL import Image, ImageOps

    from runner.data.pixels import to_pixels

    with open(path, "rb") as f:
        data = f.read()
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # a truncated file fails here (Pillow refuses truncated images by default)
        pixels, _ = to_pixels(ImageOps.exif_transpose(image), shape, "no", False)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        if isinstance(e, Image.UnidentifiedImageError):
            return None, digest, "not an image"
        return None, digest, str(e).splitlines()[0] if str(e) else type(e).__name__
    return pixels.numpy(), digest, ""


def load(root: str, seed: int, options: Options) -> Loaded:
    """The image folder at `root` as splits, classes and fingerprint. Raises UserError for a
    missing or unusable folder, a spec that would not fit in memory, or (strict) unreadable files."""
    import numpy as np
    import torch

    notes = []
    if storage.is_local(root):
        if not os.path.isdir(root):
            raise UserError(f"data.root: {root} is not a directory; point it at a folder of class folders")
        base, listed = root, storage.list_files(root)
    else:
        synced = cache.sync(root, options.cache)
        base, listed = synced.dir, synced.files
        notes.append(synced.note())
    files, passed_over = find_files(base, [(rel, size) for rel, size, _ in listed])
    if passed_over:
        notes.append(passed_over)
    assert options.image_size is not None  # the spec requires it for this data set
    shape = (options.channels, *options.image_size)
    check_memory(len(files), shape, memory_available())
    # PIL decodes with the GIL released; a few threads beyond the cores this process may use
    # (a container's CPU quota, not the node's cores) overlap the file reads.
    with ThreadPoolExecutor(max_workers=min(16, cpu_budget() + 2)) as pool:
        decoded = list(pool.map(lambda f: decode(f.path, shape), files))  # in order: deterministic
    bad = [(f, why) for f, (pixels, _, why) in zip(files, decoded, strict=True) if pixels is None]
    if bad:
        shown = ", ".join(f"{_rel(f)} ({why})" for f, why in bad[:SHOWN]) + (", ..." if len(bad) > SHOWN else "")
        if options.strict:
            raise UserError(
                f"data: {len(bad)} unreadable image(s) under {root}: {shown}; remove or fix them, "
                "or set data.strict = false to skip them"
            )
        notes.append(f"data: skipped {len(bad)} unreadable image(s) of {len(files):,}: {shown}")
    train_classes = sorted({f.cls for f in files if f.split in ("", "train")})
    others = sorted({f.cls for f in files} - set(train_classes))
    if others:
        raise UserError(
            f"data.root: class folder(s) {', '.join(map(repr, others))} in val/ or test/ but not in train/ "
            f"under {root}; every class needs training images"
        )
    label = {c: i for i, c in enumerate(train_classes)}
    print_ = fingerprint.of_files(
        (f"{f.cls}", f"{f.split}/{f.name}", f.size, d) for f, (_, d, _) in zip(files, decoded, strict=False)
    )

    def split(which: str) -> Split:
        kept = [
            (p, label[f.cls]) for f, (p, _, _) in zip(files, decoded, strict=True) if p is not None and f.split == which
        ]
        x = torch.from_numpy(np.stack([p for p, _ in kept])) if kept else torch.zeros((0, *shape), dtype=torch.uint8)
        return Split(x, torch.tensor([y for _, y in kept], dtype=torch.int64))

    if any(f.split for f in files):
        val = split("val")
        train, test = split("train"), split("test")
        if not len(test):  # every file of test/ unreadable
            raise UserError(
                f"data: the test split of {root} is empty (no readable image under {root}/test): add images there"
            )
        return Loaded(train, test, val if len(val) else None, tuple(train_classes), print_, tuple(notes))
    whole = split("")
    order = torch.randperm(len(whole), generator=torch.Generator().manual_seed(seed))
    n_test = round(len(whole) * options.test_fraction)
    if n_test >= len(whole):
        raise UserError(f"data.test_fraction: {options.test_fraction} of {len(whole)} images leaves none to train on")
    if n_test == 0:  # the run would train, then have no test_acc to end on
        raise UserError(
            f"data: the test split of {root} is empty ({len(whole)} images, data.test_fraction "
            f"{options.test_fraction}): add images or raise data.test_fraction"
        )
    test_idx, train_idx = order[:n_test], order[n_test:]
    train, test = Split(whole.x[train_idx], whole.y[train_idx]), Split(whole.x[test_idx], whole.y[test_idx])
    return Loaded(train, test, None, tuple(train_classes), print_, tuple(notes))


def _rel(f: File) -> str:
    return "/".join(p for p in (f.split, f.cls, f.name) if p)
