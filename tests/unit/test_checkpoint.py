"""The commit protocol, against the real GCS emulator (and memory:// or a local dir where noted)."""

from __future__ import annotations

import io
import json
import os
import pickle
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import torch

from runner import storage
from runner.errors import RunFailed
from runner.rundir.checkpoints import Corrupt, Entry, Key, record_name
from runner.rundir.layout import RunDir
from runner.rundir.writer import KEEP_RECORDS, CheckpointWriter, Fenced, encode, retain
from runner.spec import load_spec, resume_conflicts
from runner.training.checkpointer import COLAB_EVERY_SECONDS, Checkpointer, due, on_colab, save_every_seconds
from tests.helpers import JOBS


def payload(step: int) -> tuple[bytes, dict[str, int]]:
    state = {"weights": torch.full((64,), float(step)), "position": {"step": step}}
    return encode(state, 'name = "x"\n', {}), {"epoch": 0, "batch": step, "step": step}


def commit(store: CheckpointWriter, step: int) -> Entry:
    return store.commit(*payload(step))


def fresh_store(url: str, keep: int = 3) -> CheckpointWriter:
    store = RunDir(url).checkpoint_writer(keep)
    store.refresh()
    store.claim(None)
    return store


def claims_race(run: str) -> tuple[CheckpointWriter, CheckpointWriter]:
    """Two writers read the run, then claim it: the first wins, the second is refused."""
    a, b = RunDir(run).checkpoint_writer(3), RunDir(run).checkpoint_writer(3)
    a.refresh()
    b.refresh()
    a.claim(None)
    with pytest.raises(storage.AlreadyExists):
        b.claim(None)
    return a, b


def entry(step: int) -> Entry:
    return Entry(f"{step}.pt", step, 0, step, 1, "", 0.0)


def test_retention_keeps_the_newest_and_the_one_resumed_from() -> None:
    entries = [entry(s) for s in (50, 40, 30, 20, 10)]  # newest first
    assert [e.step for e in retain(entries, 2, pinned=None)] == [50, 40]
    assert [e.step for e in retain(entries, 2, pinned="10.pt")] == [50, 40, 10]
    assert [e.step for e in retain(entries, 2, pinned="40.pt")] == [50, 40]


@pytest.mark.parametrize(
    ("step", "now", "every_steps", "every_seconds", "expected"),
    [(10, 0, 10, 0, True), (9, 0, 10, 0, False), (1, 300, 0, 300, True), (1, 299, 0, 300, False), (5, 5, 0, 0, False)],
)
def test_when_a_save_is_due(step: int, now: float, every_steps: int, every_seconds: float, expected: bool) -> None:
    assert due(step, now, last_step=0, last_time=0.0, every_steps=every_steps, every_seconds=every_seconds) is expected


@pytest.mark.parametrize(
    ("overrides", "colab", "expected"),
    [
        ([], False, 300.0),  # the default, off Colab
        ([], True, COLAB_EVERY_SECONDS),  # Colab disconnects without a signal: save more often
        (["checkpoint.every_seconds=300"], True, 300.0),  # what the user set wins, even the default's value
        (["checkpoint.every_seconds=0"], True, 0.0),  # off, if the user says so
    ],
)
def test_colab_shortens_the_timed_save_unless_the_spec_sets_it(
    overrides: list[str], colab: bool, expected: float
) -> None:
    ckpt = load_spec(str(JOBS / "digits.toml"), overrides).checkpoint
    assert save_every_seconds(ckpt.every_seconds, "every_seconds" in ckpt.model_fields_set, colab) == expected


def test_colab_is_detected_from_its_runtime_not_assumed() -> None:
    assert on_colab({"COLAB_RELEASE_TAG": "release-colab-20261120"})
    assert not on_colab({})  # this machine has no google.colab package either


def test_resume_conflicts_name_what_changed_and_allow_what_may() -> None:
    saved = load_spec(str(JOBS / "digits.toml")).model_dump(mode="json")
    allowed = load_spec(str(JOBS / "digits.toml"), ["epochs=30", "device=cpu", "checkpoint.every_steps=5"])
    assert resume_conflicts(saved, allowed) == []
    changed = load_spec(str(JOBS / "digits.toml"), ["model=mlp", "model_options={}", "batch_size=32"])
    conflicts = resume_conflicts(saved, changed)
    assert [c.split(" ")[0] for c in conflicts] == ["batch_size", "model", "model_options"]
    assert "batch_size (64 -> 32)" in conflicts
    # Augmentation changes what is trained: refused; a spec saved before runner had the key is not.
    augmented = load_spec(str(JOBS / "digits.toml"), ["data.augment=['flip']"])
    assert resume_conflicts(saved, augmented) == ["data.augment ([] -> ['flip'])"]
    older = {**saved, "data": {k: v for k, v in saved["data"].items() if k != "augment"}}
    assert resume_conflicts(older, load_spec(str(JOBS / "digits.toml"))) == []


def test_commits_are_visible_to_a_new_reader(bucket: str) -> None:
    run = f"{bucket}/runs/a"
    store = fresh_store(run)
    for step in (5, 10):
        commit(store, step)
    reader = RunDir(run).checkpoint_index()
    assert [e.step for e in reader.refresh()] == [10, 5]
    state, newest = reader.newest_valid(print)
    assert newest.step == 10 and torch.equal(state["state"]["weights"], torch.full((64,), 10.0))
    assert state["versions"]["torch"] == str(torch.__version__) and len(state["spec_sha256"]) == 64


def test_retention_prunes_payloads_after_the_commit_and_spares_the_pinned_one(bucket: str) -> None:
    run = f"{bucket}/runs/a"
    first = fresh_store(run, keep=2)
    commit(first, 1)
    resumed = RunDir(run).checkpoint_writer(2)
    resumed.refresh()
    _, pinned = resumed.newest_valid(print)
    resumed.claim(pinned.file)
    for step in (2, 3, 4, 5):
        commit(resumed, step)
    assert [e.step for e in resumed.entries] == [5, 4, 1]
    payloads = [n for n in storage.list_names(resumed.dir) if n.endswith(".pt")]
    assert sorted(payloads) == sorted(e.file for e in resumed.entries)


@pytest.mark.parametrize("loss", ["a byte short", "a byte changed"])
def test_an_upload_the_store_did_not_keep_whole_is_never_committed(
    bucket: str, loss: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pytorch #183878: a writer that silently lost data on GCS. Here the store gets damaged
    # bytes; the size (a byte short) or the store's own MD5 (a byte changed) gives it away.
    run = f"{bucket}/runs/a"
    store = fresh_store(run)
    good = commit(store, 5)
    write = storage.write_bytes

    def lossy(url: str, data: bytes, create_only: bool = False) -> None:
        if url.endswith(".pt"):
            data = data[:-1] if loss == "a byte short" else data[:-1] + bytes([data[-1] ^ 1])
        write(url, data, create_only)

    monkeypatch.setattr(storage, "write_bytes", lossy)
    with pytest.raises(OSError, match=r"the store holds \d+ bytes \(MD5 \w+\) of 000000000010-1-\w+\.pt, written"):
        commit(store, 10)
    reader = RunDir(run).checkpoint_index()
    assert reader.refresh() == [good]  # not committed
    assert [n for n in storage.list_names(store.dir) if n.endswith(".pt")] == [good.file]  # and deleted


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(bucket: str, damage: str) -> None:
    run = f"{bucket}/runs/a"
    store = fresh_store(run)
    commit(store, 5)
    newest = commit(store, 10)
    url = storage.join(store.dir, newest.file)
    data = storage.read_bytes(url)
    if damage == "truncate":  # a writer killed mid-upload on a store without atomic uploads
        storage.write_bytes(url, data[: len(data) // 2])
    elif damage == "flip":
        storage.write_bytes(url, data[:100] + bytes([data[100] ^ 1]) + data[101:])
    else:
        storage.delete(url)
    warnings: list[str] = []
    reader = RunDir(run).checkpoint_index()
    reader.refresh()
    state, found = reader.newest_valid(warnings.append)
    assert found.step == 5 and torch.equal(state["state"]["weights"], torch.full((64,), 5.0))
    assert len(warnings) == 1 and "checkpoint at step 10" in warnings[0] and "falling back" in warnings[0]


class Exploit:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the planted file is a plain pickle
def test_a_planted_malicious_pickle_does_not_run(bucket: str, tmp_path: Path) -> None:
    run = f"{bucket}/runs/a"
    store = fresh_store(run)
    commit(store, 5)
    # An attacker with write access plants a payload and a commit record that matches it.
    Exploit.marker = str(tmp_path / "pwned")
    evil = pickle.dumps({"state": Exploit()})
    store.commit(evil, {"epoch": 0, "batch": 9, "step": 9})
    reader = RunDir(run).checkpoint_index()
    reader.refresh()
    warnings: list[str] = []
    _, found = reader.newest_valid(warnings.append)
    assert not (tmp_path / "pwned").exists()
    assert found.step == 5
    assert "does not load safely" in warnings[0]
    pickle.loads(evil)  # the control: the exploit works when unpickled naively
    assert (tmp_path / "pwned").exists()


def test_a_zombie_writer_is_fenced_by_the_newer_attempt(bucket: str) -> None:
    run = f"{bucket}/runs/a"
    zombie = fresh_store(run)
    commit(zombie, 5)
    newer = RunDir(run).checkpoint_writer(3)  # the retried pod: reads, resumes, claims
    newer.refresh()
    newer.claim(newer.entries[0].file)
    with pytest.raises(Fenced, match="another run"):
        commit(zombie, 6)  # the zombie wakes up and tries to commit
    commit(newer, 7)
    assert [e.step for e in RunDir(run).checkpoint_index().refresh()] == [7, 5]


def test_two_writers_racing_for_the_same_commit_cannot_both_win(bucket: str) -> None:
    run = f"{bucket}/runs/a"
    a, b = RunDir(run).checkpoint_writer(3), RunDir(run).checkpoint_writer(3)
    a.refresh()
    b.refresh()
    a.claim(None)
    with pytest.raises(storage.AlreadyExists):  # create-only: the server says no
        b.claim(None)
    b.refresh()
    b.claim(None)  # read again, then claim on top: b is now the writer
    with pytest.raises(Fenced):
        commit(a, 1)


@pytest.mark.parametrize("one_request_bytes", [2**30, 8 * 2**20], ids=["one-request", "resumable-8MiB-chunks"])
def test_a_checkpoint_bigger_than_a_chunk_uploads_verified(
    bucket: str, monkeypatch: pytest.MonkeyPatch, one_request_bytes: int
) -> None:
    # Both ways a payload reaches GCS: one request up to GCS_ONE_REQUEST_BYTES, chunks beyond.
    # 55 MB: over gcsfs's own 50 MiB chunk, so "one request" is runner's choice, not gcsfs's default.
    monkeypatch.setattr(storage, "GCS_ONE_REQUEST_BYTES", one_request_bytes)
    weights = torch.arange(13 * 2**20, dtype=torch.float32)
    assert weights.nbytes > 50 * 2**20
    run = f"{bucket}/runs/big"
    written = fresh_store(run).commit(
        encode({"weights": weights}, 'name = "x"\n', {}), {"epoch": 0, "batch": 1, "step": 1}
    )
    reader = RunDir(run).checkpoint_index()
    reader.refresh()
    state, newest = reader.newest_valid(print)
    assert newest == written and torch.equal(state["state"]["weights"], weights)


def test_the_emulator_keeps_answering_past_a_pipe_full_of_its_log(gcs_emulator: str, bucket: str) -> None:
    # Infrastructure, not runner: the fixture must drain the server's log, or it stops
    # answering after ~480 requests, and long tests hang (as the benchmark once did).
    listing = f"{gcs_emulator}/storage/v1/b/{bucket.removeprefix('gs://')}/o"
    for _ in range(600):
        urllib.request.urlopen(listing, timeout=10).read()


def test_a_store_that_times_out_is_a_retriable_failure_with_a_reason() -> None:
    from fsspec.exceptions import FSTimeoutError  # what gcsfs raises once its retries are spent

    error = storage.failure("gs://b/run", FSTimeoutError(), "checkpoint.dir")
    assert isinstance(error, RunFailed) and str(error) == "checkpoint.dir: gs://b/run is unreachable: no answer in time"


def test_memory_urls_work_too() -> None:
    run = f"memory://runs/{uuid.uuid4().hex}"
    store = fresh_store(run)
    commit(store, 3)
    assert RunDir(run).checkpoint_index().refresh()[0].step == 3


def test_a_failing_store_is_retried_in_the_background_and_the_final_save_fails_loudly(tmp_path: Path) -> None:
    run = tmp_path / "run"
    store = fresh_store(str(run))
    # A real filesystem fault: a file where the checkpoint directory must be.
    (run / "checkpoints").rename(run / "moved")
    (run / "checkpoints").write_text("not a directory")
    logs: list[str] = []
    step = {"now": 1}
    saver = Checkpointer(store, lambda: payload(step["now"]), every_steps=1, every_seconds=0, step=0, log=logs.append)
    saver.after_step(1)
    saver.wait()
    assert saver.pending and "checkpoint failed" in logs[0] and "training goes on" in logs[0]
    with pytest.raises(RunFailed, match="could not save the checkpoint at step 1"):
        saver.save_now(step=1, attempts=2)
    # The store comes back: the owed save goes through.
    (run / "checkpoints").unlink()
    (run / "moved").rename(run / "checkpoints")
    step["now"] = 2
    saver.retry_at = 0  # skip the backoff wait
    saver.after_step(2)
    saver.wait()
    saver.close()
    assert not saver.pending and [e.step for e in RunDir(str(run)).checkpoint_index().refresh()] == [2]


# Bytes that cannot turn up by chance in a payload: 4096 float32s counting up from 1e6.
MARKER = torch.arange(1_000_000, 1_004_096, dtype=torch.float32)


def commit_marked(store: CheckpointWriter, step: int) -> Entry:
    state = {"marker": MARKER, "weights": torch.full((64,), float(step))}
    return store.commit(encode(state, 'name = "x"\n', {}), {"epoch": 0, "batch": step, "step": step})


def claimed(run: str, keep: int = 3) -> CheckpointWriter:
    store = RunDir(run).checkpoint_writer(keep)
    store.refresh()
    store.claim(store.entries[0].file if store.entries else None)
    return store


def test_a_byte_flipped_in_tensor_data_is_caught_by_the_md5_and_resume_falls_back(bucket: str) -> None:
    """Mutation: CheckpointIndex.load without the MD5 comparison (the size check kept)."""
    run = f"{bucket}/runs/a"
    store = claimed(run)
    commit_marked(store, 5)
    newest = commit_marked(store, 10)
    url = storage.join(store.dir, newest.file)
    data = storage.read_bytes(url)
    raw = MARKER.numpy().tobytes()
    start = data.find(raw)
    assert start > 0 and data.find(raw, start + 1) == -1, "the marker's storage is in the payload, once"
    at = start + len(raw) // 2  # deep inside the tensor's data: no header or zip metadata near
    damaged = data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]
    storage.write_bytes(url, damaged)
    assert len(storage.read_bytes(url)) == newest.size  # the size check cannot see it
    # Control: the damage is invisible to torch.load; only the MD5 can tell.
    loaded = torch.load(io.BytesIO(damaged), map_location="cpu", weights_only=True)
    assert not torch.equal(loaded["state"]["marker"], MARKER)

    reader = RunDir(run).checkpoint_index()
    assert [e.step for e in reader.refresh()] == [10, 5]
    warnings: list[str] = []
    state, found = reader.newest_valid(warnings.append)
    assert found.step == 5, f"resumed from step {found.step}, a checkpoint with a damaged tensor"
    assert torch.equal(state["state"]["weights"], torch.full((64,), 5.0))
    assert torch.equal(state["state"]["marker"], MARKER)
    assert len(warnings) == 1, warnings
    assert f"checkpoint at step 10 ({newest.file}) is unusable" in warnings[0] and "falling back" in warnings[0]
    assert f"MD5 {storage.md5(damaged)}, committed as {newest.size} bytes, {newest.md5}" in warnings[0]


def test_a_zombie_whose_next_record_was_pruned_is_still_fenced_and_deletes_nothing(bucket: str) -> None:
    """Mutation: in CheckpointWriter.commit, `!= self.head` weakened to `< self.head`.

    Every record of the zombie's was pruned by the newer writer; only the "newest record
    is not ours" check catches it.
    """
    run = f"{bucket}/runs/a"
    zombie = claimed(run)  # record 1
    commit_marked(zombie, 1)  # record 2
    newer = claimed(run)  # the retried pod: record 3, pinned to the zombie's checkpoint
    for step in range(2, 2 + KEEP_RECORDS + 2):  # records 4..25: records 1..5 are pruned
        commit_marked(newer, step)
    records = storage.list_names(newer.records)
    assert not [name for name in records if zombie.writer in name], records  # the zombie's records are gone

    fenced = False
    try:
        commit_marked(zombie, 99)  # the zombie wakes up
    except Fenced:
        fenced = True
    reader = RunDir(run).checkpoint_index()
    entries = reader.refresh()
    assert reader.head == newer.head, f"the newest record is {reader.head}, not the newer writer's {newer.head}"
    assert [e.step for e in entries] == [KEEP_RECORDS + 3, KEEP_RECORDS + 2, KEEP_RECORDS + 1, 1]
    unusable = []
    for e in entries:
        try:
            reader.load(e)
        except Corrupt as error:
            unusable.append(f"step {e.step} ({e.file}): {error}")
    assert not unusable, f"the newest record lists checkpoints the zombie destroyed: {unusable}"
    assert fenced, "the zombie committed on top of the newer attempt instead of being fenced"


def test_a_record_cut_off_mid_write_neither_stops_readers_nor_the_writer(tmp_path: Path) -> None:
    # A local record is written to a temporary name first; a reader listing meanwhile (runner
    # status from another terminal), or a process killed mid-write, sees that name.
    run = str(tmp_path / "run")
    store = fresh_store(run)
    commit(store, 1)
    leftover = tmp_path / "run" / "checkpoints" / "commits" / ".tmp-0123abcd-0000000009.json"
    leftover.write_text('{"seq": 9, "checkp')
    assert [e.step for e in RunDir(run).checkpoint_index().refresh()] == [1]
    resumed = RunDir(run).checkpoint_writer(3)
    resumed.refresh()
    resumed.claim(None)
    commit(resumed, 2)  # prunes the leftover
    assert not leftover.exists() and [e.step for e in RunDir(run).checkpoint_index().refresh()] == [2, 1]


def record_path(run: Path, key: Key) -> Path:
    return run / "checkpoints" / "commits" / record_name(key)


@pytest.mark.parametrize("torn", ["empty", "cut off", "a digit changed"])
def test_a_torn_newest_record_never_wins_and_the_next_writer_commits_above_it(tmp_path: Path, torn: str) -> None:
    """Where create-only has no link(2) (FUSE mounts), a record is created first and written
    after: a writer killed in between leaves it empty or cut off. Mutation: refresh() reading
    only the newest record (as before) fails here."""
    run = tmp_path / "run"
    store = fresh_store(str(run))
    commit(store, 1)
    whole = record_path(run, store.head).read_bytes()
    damaged = {
        "empty": b"",
        "cut off": whole[: len(whole) // 2],
        "a digit changed": whole.replace(b'"step": 1', b'"step": 7'),
    }
    assert damaged[torn] != whole
    killed = (store.seq + 1, store.seq + 1, "killed")
    record_path(run, killed).write_bytes(damaged[torn])  # the claim a killed writer left
    assert [e.step for e in RunDir(str(run)).checkpoint_index().refresh()] == [1]
    with pytest.raises(Fenced):
        commit(store, 2)  # a newer claim, torn or not: this writer is no longer the only one
    resumed = RunDir(str(run)).checkpoint_writer(3)
    assert [e.step for e in resumed.refresh()] == [1]
    resumed.claim(resumed.entries[0].file)
    commit(resumed, 3)
    assert [e.step for e in RunDir(str(run)).checkpoint_index().refresh()] == [3, 1]
    assert resumed.seq == store.seq + 3  # claimed and committed above the torn record


def test_on_a_fuse_mount_without_hard_links_commits_stay_create_only(fuse_dir: Path) -> None:
    """A real rclone mount: link(2) fails there (the fault: EIO), yet two writers still cannot
    both claim, and what is committed reads back verified. Mutation: storage._write_local
    without its fallback to an exclusive create fails at the first claim."""
    (fuse_dir / "probe").write_bytes(b"x")
    with pytest.raises(OSError) as no_link:
        os.link(fuse_dir / "probe", fuse_dir / "probe-link")
    assert no_link.value.errno in storage.NO_HARD_LINKS
    run = str(fuse_dir / "run")
    a, b = claims_race(run)
    committed = commit(a, 1)
    reader = RunDir(run).checkpoint_index()
    assert reader.refresh() == [committed]
    assert torch.equal(reader.load(committed)["state"]["weights"], torch.full((64,), 1.0))
    b.refresh()
    b.claim(committed.file)  # the next attempt takes over
    with pytest.raises(Fenced):
        commit(a, 2)
    assert not [name for name in os.listdir(fuse_dir / "run" / "checkpoints" / "commits") if name.startswith(".tmp-")]


def test_a_full_disk_is_named_as_such() -> None:
    import errno

    error = storage.failure("runs/x", OSError(errno.ENOSPC, "No space left on device"), "checkpoint.dir")
    assert isinstance(error, RunFailed) and str(error).startswith("checkpoint.dir: no space left on runs/x")
    assert storage.out_of_space(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not storage.out_of_space(OSError(errno.EIO, "Input/output error"))


def test_without_hard_links_two_writers_racing_for_one_commit_record_cannot_both_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """link(2) fails as it does on a FUSE mount (EPERM): the create-only write falls back to
    O_EXCL, and the writer that comes second is refused, its record never over the first's."""
    import errno

    def no_hard_links(src: str, dst: str) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_hard_links)
    record = str(tmp_path / "commits" / "0000000009.json")
    storage.write_bytes(record, b"attempt B's claim", create_only=True)
    with pytest.raises(storage.AlreadyExists):
        storage.write_bytes(record, b"attempt A's commit", create_only=True)
    assert Path(record).read_bytes() == b"attempt B's claim"
    # And through the checkpoint writer: two writers of one run, one claim each.
    a, b = claims_race(str(tmp_path / "run"))
    b.refresh()
    b.claim(None)
    with pytest.raises(Fenced):
        commit(a, 1)


def test_a_full_disk_frees_what_retention_may_and_never_the_checkpoint_resumed_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC on an upload (h2o-llmstudio #214): every checkpoint but the newest and the pinned
    one goes, committed first; the upload is tried once more and commits."""
    import errno

    run = str(tmp_path / "run")
    first = fresh_store(run, keep=5)
    commit(first, 1)
    resumed = RunDir(run).checkpoint_writer(5)
    resumed.refresh()
    _, pinned = resumed.newest_valid(print)
    resumed.claim(pinned.file)
    for step in (2, 3, 4):
        commit(resumed, step)
    write, full = storage.write_bytes, [True]

    def a_full_disk_once(url: str, data: bytes, create_only: bool = False) -> None:
        if url.endswith(".pt") and full:
            full.pop()
            raise OSError(errno.ENOSPC, "No space left on device")
        write(url, data, create_only)

    monkeypatch.setattr(storage, "write_bytes", a_full_disk_once)
    commit(resumed, 5)
    assert [e.step for e in resumed.entries] == [5, 4, 1]  # 2 and 3 freed; 1 is where it resumed from
    on_disk = sorted(n for n in storage.list_names(resumed.dir) if n.endswith(".pt"))
    assert on_disk == sorted(e.file for e in resumed.entries)


@pytest.mark.parametrize("dir_cache", ["5m", "1s"], ids=lambda t: f"dir-cache-{t}")
def test_two_mounts_of_one_store_replace_nothing_and_the_older_attempt_is_fenced_once_its_mount_lists(
    tmp_path: Path, dir_cache: str
) -> None:
    """Issue 23.3 (gcsfuse #305): two rclone mounts of one folder, as two Colab runtimes on one
    Drive folder or two nodes' gcsfuse mounts of one bucket. Attempt B resumes through mount B
    while A's mount still lists the folder as it was (rclone caches a directory's listing for
    --dir-cache-time, 5 min by default), so A's next commit cannot see B's claim, and an O_EXCL
    create through A does not see B's files either: before, A's record took the name of B's
    claim and replaced it (the last upload wins). Now no record or payload of B's is replaced or
    deleted whatever A's mount shows, readers everywhere take B's as the newest, and A is fenced
    at its first commit once its mount lists B's claim."""
    from runner.mounts import fuse_type
    from tests.conftest import need_fuse, rclone_mount

    need_fuse()
    (store := tmp_path / "store").mkdir()
    options = ("--vfs-cache-mode=off", f"--dir-cache-time={dir_cache}")
    with (
        rclone_mount(store, tmp_path / "a", tmp_path / "cache-a", *options) as mount_a,
        rclone_mount(store, tmp_path / "b", tmp_path / "cache-b", *options) as mount_b,
    ):
        assert (fuse_type(str(mount_a / "run")), fuse_type(str(store))) == ("fuse.rclone", None)  # told on resume
        a = claimed(str(mount_a / "run"))
        for step in (1, 2, 3):
            commit(a, step)
        b = claimed(str(mount_b / "run"))  # the resubmitted attempt, through the other mount
        assert b.pinned == a.entries[0].file
        commit(b, 4)
        ours = {p.name: p.read_bytes() for p in (store / "run" / "checkpoints").rglob("*") if p.is_file()}

        stale_commit_fenced = False
        try:
            commit(a, 5)  # the older attempt, not yet stopped, commits through its own mount
        except Fenced:
            stale_commit_fenced = True  # its mount listed B's claim already (1 s cache on a slow machine)
        assert dir_cache == "1s" or not stale_commit_fenced, "mount A listed B's claim at once"
        after = {p.name: p.read_bytes() for p in (store / "run" / "checkpoints").rglob("*") if p.is_file()}
        assert {name: after.get(name) for name in ours} == ours, "a file of B's was replaced or deleted"
        for where in (store, mount_b):
            reader = RunDir(str(where / "run")).checkpoint_index()
            assert [e.step for e in reader.refresh()] == [4, 3, 2], where
            assert reader.head == b.head, where
        commit(b, 6)  # B goes on, above A's record whatever its seq
        assert [e.step for e in RunDir(str(store / "run")).checkpoint_index().refresh()] == [6, 4, 3]

        if dir_cache == "1s":
            time.sleep(1.5)  # mount A's listing of the folder expires
            with pytest.raises(Fenced):
                commit(a, 7)
            assert [e.step for e in RunDir(str(store / "run")).checkpoint_index().refresh()] == [6, 4, 3]


def test_a_writer_prunes_only_files_of_its_own_term_or_older(tmp_path: Path) -> None:
    """What a writer that cannot see a newer claim yet (another mount's cache) may delete: an
    upload in flight of a newer term (its temporary file, its payload) is never among it;
    leftovers of its own term and older ones are. Mutation: `_term_of(name) <= self.term`
    dropped from _prune fails here."""
    run = tmp_path / "run"
    a = fresh_store(str(run))  # term 1
    checkpoints = run / "checkpoints"
    newer = [".tmp-0123abcd-000000000005-9-feedbeef.pt", "000000000005-9-feedbeef.pt"]
    older = [".tmp-0123abcd-000000000004-1-deadbeef.pt", "000000000004-1-deadbeef.pt", "000000000003-cafebabe.pt"]
    for name in [*newer, *older]:
        (checkpoints / name).write_bytes(b"x")
    (checkpoints / "commits" / ".tmp-0123abcd-0000000009-0000000009-b0b.json").write_bytes(b"{")
    commit(a, 1)
    left = sorted(p.name for p in checkpoints.rglob("*") if p.is_file() and "commits" not in p.parts)
    assert left == sorted([*newer, a.entries[0].file]), left
    assert (checkpoints / "commits" / ".tmp-0123abcd-0000000009-0000000009-b0b.json").exists()


def test_a_run_directory_from_before_terms_resumes_and_its_records_stay_below_the_new_ones(tmp_path: Path) -> None:
    """Records named `<seq>.json` (runner before terms) are read as term 0: a new writer
    resumes from them, claims above them, and retention lets them go in their turn."""
    run = tmp_path / "run"
    old = fresh_store(str(run))
    commit(old, 1)
    commit(old, 2)
    for path in (run / "checkpoints" / "commits").iterdir():  # as the old layout named them
        path.rename(path.with_name(f"{json.loads(path.read_text())['seq']:010d}.json"))
    new = claimed(str(run))
    assert new.pinned == old.entries[0].file and new.term == 4
    commit(new, 3)
    assert [e.step for e in RunDir(str(run)).checkpoint_index().refresh()] == [3, 2, 1]
    for step in range(4, 4 + KEEP_RECORDS):
        commit(new, step)
    assert not [p.name for p in (run / "checkpoints" / "commits").iterdir() if "-" not in p.name]


def test_the_fuse_mount_a_path_is_on_is_read_from_mountinfo_as_proc5_writes_it() -> None:
    """The deepest mount point containing the path counts; the kernel escapes a space as \\040
    and writes other characters as they are (a Drive folder with an accent)."""
    from runner.mounts import fuse_type

    mountinfo = (
        "22 1 0:21 / / rw - overlay overlay rw\n"
        "30 22 0:25 / /content/drive rw,nosuid - fuse.drive drive rw\n"
        "31 30 0:26 / /content/drive/Mon\\040Drive\\040é/local rw - ext4 /dev/sda1 rw\n"
        "32 22 0:27 / /mnt/bucket rw - fuse.gcsfuse bucket rw\n"
    )
    assert fuse_type("/content/drive/Mon Drive é/runs/x", mountinfo) == "fuse.drive"
    assert fuse_type("/content/drive/Mon Drive é/local/runs/x", mountinfo) is None  # a disk mounted inside
    assert fuse_type("/mnt/bucket", mountinfo) == "fuse.gcsfuse"
    assert fuse_type("/mnt/bucket-other/x", mountinfo) is None
    assert fuse_type("/content/x", mountinfo) is None
