"""Image folders (data/imagefolder.py), the data's fingerprint (data/fingerprint.py), the
remote cache (data/cache.py) and their spec keys: real files on disk and in the GCS emulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from runner import storage
from runner.data import cache, fingerprint
from runner.data.datasets import channel_stats, load_dataset
from runner.data.imagefolder import check_memory, find_files, load
from runner.data.splits import Options
from runner.errors import UserError
from runner.spec import resolve
from tests.image_folders import CORRUPT, NAMES, write_digit_folder

OPTIONS = Options(image_size=(16, 16), channels=1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    write_digit_folder(root, per_class=6)
    return root


def test_a_folder_loads_as_uint8_with_classes_from_the_folders_and_skips_broken_files(folder: Path) -> None:
    loaded = load(str(folder), 0, OPTIONS)
    assert loaded.classes == tuple(sorted(NAMES))
    assert len(loaded.train) + len(loaded.test) == 60 and len(loaded.test) == 12  # test_fraction 0.2
    assert loaded.train.x.dtype == torch.uint8 and tuple(loaded.train.x.shape[1:]) == (1, 16, 16)
    assert loaded.fingerprint.samples == 62  # the broken files are data too: replacing one is a change
    (note,) = loaded.notes
    assert note.startswith("data: skipped 2 unreadable image(s) of 62: ") and all(c in note for c in CORRUPT)
    again = load(str(folder), 0, OPTIONS)  # decoded by threads, in any order: the same tensors
    assert torch.equal(again.train.x, loaded.train.x) and torch.equal(again.test.y, loaded.test.y)
    assert again.fingerprint == loaded.fingerprint
    colour = load(str(folder), 0, Options(image_size=(12, 20), channels=3))
    assert tuple(colour.train.x.shape[1:]) == (3, 12, 20)


def test_strict_refuses_broken_files_naming_them(folder: Path) -> None:
    with pytest.raises(
        UserError, match=r"data: 2 unreadable image\(s\) under .*five/not-an-image.jpg \(not an image\)"
    ):
        load(str(folder), 0, Options(image_size=(16, 16), channels=1, strict=True))


def test_a_split_layout_is_used_as_given(tmp_path: Path) -> None:
    for split, n in (("train", 4), ("val", 2), ("test", 3)):
        write_digit_folder(tmp_path / split, per_class=n, corrupt=False)
    data = load_dataset("imagefolder", str(tmp_path), False, 0.5, 0, OPTIONS)
    assert (len(data.train), len(data.val), len(data.test)) == (40, 20, 30)  # val/ given: val_fraction unused
    assert data.info.shape == (1, 16, 16) and data.info.mean == channel_stats(data.train.x)[0]


def test_layouts_found_and_refused() -> None:
    single, passed = find_files("r", [("a/1.png", 3), ("b/x/2.JPG", 4), ("notes.txt", 1), ("a/.DS_Store.png", 1)])
    assert [(f.split, f.cls, f.name) for f in single] == [("", "a", "1.png"), ("", "b", "x/2.JPG")]
    assert passed == "data: passed over a/.DS_Store.png (hidden), 1 file (notes.txt) that is not images"
    split, passed = find_files(
        "r", [("train/a/1.png", 3), ("test/a/2.png", 3), ("train/b/3.png", 3), ("README.png", 1)]
    )
    assert [(f.split, f.cls) for f in split] == [("test", "a"), ("train", "a"), ("train", "b")]
    assert passed == "data: passed over 1 file (README.png) outside the class folders"
    assert find_files("r", [("a/1.png", 3), ("b/2.png", 3)])[1] == ""
    with pytest.raises(UserError, match="no images in class folders under r; lay them out as r/<class>/<image>"):
        find_files("r", [("1.png", 3), ("a/readme.md", 2)])
    with pytest.raises(UserError, match="one class folder \\('a'\\) under r; a classifier needs two or more"):
        find_files("r", [("a/1.png", 3), ("a/2.png", 3), ("b/notes.txt", 1)])


def test_hidden_folders_and_files_are_neither_classes_nor_samples(tmp_path: Path) -> None:
    """What Jupyter/Colab (.ipynb_checkpoints), macOS (.DS_Store, a zip's __MACOSX) and Windows
    (Thumbs.db) leave in a folder of images: passed over, and said so in one line."""
    write_digit_folder(tmp_path, per_class=2, corrupt=False)
    seven = next((tmp_path / "seven").iterdir())
    litter = {
        ".ipynb_checkpoints/0000-checkpoint.png": seven.read_bytes(),  # a class, before
        "__MACOSX/seven/._0000.png": seven.read_bytes(),  # a class, before
        "seven/.ipynb_checkpoints/0000-checkpoint.png": seven.read_bytes(),  # a sample of seven, before
        ".DS_Store": b"\0\0\0\1Bud1",
        "seven/Thumbs.db": b"\xd0\xcf",
        "notes.txt": b"digits",
    }
    for name, data in litter.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    loaded = load(str(tmp_path), 0, OPTIONS)
    assert loaded.classes == tuple(sorted(NAMES))
    assert len(loaded.train) + len(loaded.test) == 20 and loaded.fingerprint.samples == 20
    assert loaded.notes == (
        "data: passed over .DS_Store (hidden), .ipynb_checkpoints/ (hidden, 1 file), __MACOSX/ (hidden, 1 file), "
        "1 more hidden, 2 files (notes.txt, seven/Thumbs.db) that are not images",
    )
    clean = tmp_path.parent / f"{tmp_path.name}-clean"
    write_digit_folder(clean, per_class=2, corrupt=False)
    assert torch.equal(load(str(clean), 0, OPTIONS).train.x, loaded.train.x)  # as if the litter were not there


def test_the_memory_check_names_the_size_and_what_to_change() -> None:
    check_memory(1000, (3, 64, 64), available=10**9)  # 12 MB of tensors: fits
    with pytest.raises(UserError) as e:
        check_memory(100_000, (3, 224, 224), available=8 * 10**9)
    assert str(e.value) == (
        "data: 100,000 images at 3x224x224 take 15.1 GB as uint8 tensors and about 45.2 GB to load, more than "
        "the 8.0 GB this machine has free; lower data.image_size (now 224x224), set data.channels = 1, use fewer "
        "images, or run where there is more memory (resources.memory)"
    )


def test_loading_more_than_fits_stops_before_decoding(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import runner.data.imagefolder as imagefolder

    monkeypatch.setattr(imagefolder, "memory_available", lambda: 5 * 10**8)  # a machine with 500 MB free
    monkeypatch.setattr(imagefolder, "decode", lambda *args: pytest.fail("decoded"))
    with pytest.raises(UserError, match=r"data: 62 images at 1x2048x2048 take 260 MB .* lower data.image_size"):
        load(str(folder), 0, Options(image_size=(2048, 2048), channels=1))


def test_channel_stats_are_the_exact_mean_and_std() -> None:
    x = torch.randint(0, 256, (50, 3, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    mean, std = channel_stats(x)
    flat = x.double().div(255).transpose(0, 1).reshape(3, -1)
    assert torch.allclose(torch.tensor(mean, dtype=torch.float64), flat.mean(1), atol=1e-12)
    assert torch.allclose(torch.tensor(std, dtype=torch.float64), flat.std(1, unbiased=False), atol=1e-9)


def print_of(files: dict[str, list[tuple[str, int, str]]]) -> fingerprint.Fingerprint:
    return fingerprint.of_files(
        (cls, name, size, content) for cls, entries in files.items() for name, size, content in entries
    )


def test_fingerprint_changes_say_what_changed() -> None:
    files = {c: [(f"{i}.png", 10 + i, f"h{c}{i}") for i in range(3)] for c in ("seven", "one", "two")}
    old = print_of(files)
    assert fingerprint.changes(old, print_of(dict(reversed(files.items())))) == []  # order is no change
    assert fingerprint.Fingerprint.from_dict(json.loads(json.dumps(old.to_dict()))) == old
    renamed = {("sevens" if c == "seven" else c): v for c, v in files.items()}
    assert fingerprint.changes(old, print_of(renamed)) == ["classes: renamed 'seven' -> 'sevens'"]
    grown = {**files, "one": [*files["one"], ("9.png", 5, "new")], "two": [("0.png", 10, "other"), *files["two"][1:]]}
    assert fingerprint.changes(old, print_of(grown)) == [
        "class 'one': 3 -> 4 samples",
        "class 'two': 3 samples, some changed",
    ]
    fewer = {"one": files["one"], "two": files["two"], "eight": [("0.png", 1, "x")]}
    assert fingerprint.changes(old, print_of(fewer)) == [
        "class 'seven' removed (3 samples)",
        "class 'eight' added (1 samples)",
    ]


def test_a_built_in_data_set_has_a_fingerprint_of_its_samples() -> None:
    data = load_dataset("digits", "unused", False, 0.1, 0)
    assert data.fingerprint.samples == 1797 and set(data.fingerprint.per_class) == set(data.info.classes)
    assert load_dataset("digits", "unused", False, 0.3, 5).fingerprint == data.fingerprint  # the data, not its split


def test_the_cache_downloads_what_changed_and_drops_what_went(bucket: str, tmp_path: Path) -> None:
    root = f"{bucket}/images"
    for name in ("a/1.png", "a/2.png", "b/3.png"):
        storage.write_bytes(f"{root}/{name}", name.encode())
    first = cache.sync(root, str(tmp_path))
    assert (first.fetched, len(first.files)) == (3, 3) and (Path(first.dir) / "b/3.png").read_bytes() == b"b/3.png"
    storage.write_bytes(f"{root}/a/2.png", b"rewritten")  # a new generation
    storage.write_bytes(f"{root}/c/4.png", b"new")
    storage.delete(f"{root}/b/3.png")
    second = cache.sync(root, str(tmp_path))
    assert second.fetched == 2 and second.fetched_bytes == len(b"rewritten") + len(b"new")
    assert second.note().startswith("data: 2 of 3 files downloaded (12 B), the rest cached in ")
    assert (Path(second.dir) / "a/2.png").read_bytes() == b"rewritten" and not (Path(second.dir) / "b/3.png").exists()
    assert cache.sync(root, str(tmp_path)).fetched == 0


@pytest.mark.parametrize(
    ("sets", "error"),
    [
        (["data.image_size=32"], "data: image_size: only for your own image files (dataset = 'imagefolder'); 'digits'"),
        (["data.channels=1"], "channels: only for your own image files"),
        (["data.dataset=imagefolder"], "image_size: required for dataset = 'imagefolder'"),
        (["data.dataset=imagefolder", "data.image_size=[3]"], "data.image_size: [3] is not an image size"),
        (["data.dataset=imagefolder", "data.image_size=8", "data.channels=2"], "data.channels"),
    ],
)
def test_spec_keys_for_image_folders_are_checked(sets: list[str], error: str) -> None:
    with pytest.raises(UserError, match=error.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        resolve({"name": "x", "model": "cnn", "data": {"dataset": "digits"}}, "job.toml", sets)


def test_image_size_may_be_one_number_or_height_and_width() -> None:
    spec = {"name": "x", "model": "cnn", "data": {"dataset": "imagefolder"}}
    assert resolve(spec, "job.toml", ["data.image_size=32"]).data.options().image_size == (32, 32)
    options = resolve(spec, "job.toml", ["data.image_size=[24, 40]"]).data.options()
    assert options.image_size == (24, 40) and options.channels == 3


def test_a_missing_folder_or_an_empty_bucket_prefix_is_one_line(tmp_path: Path, bucket: str) -> None:
    with pytest.raises(
        UserError, match=r"data.root: .*/nope is not a directory; point it at a folder of class folders"
    ):
        load(str(tmp_path / "nope"), 0, OPTIONS)
    with pytest.raises(UserError, match=rf"data.root: no files under {bucket}/images; put one folder per class"):
        load(f"{bucket}/images", 0, Options(image_size=(8, 8), cache=str(tmp_path)))
