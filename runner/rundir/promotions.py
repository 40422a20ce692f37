"""Which run of a job is promoted: records in the job's prefix, the folder of its run directories.

    <prefix>/<run>/...                   run directories (a CronJob's: one per scheduled run)
    <prefix>/promoted/<seq>.json         promotion records, written create-only; newest that verifies wins

A record names a run directory beside it (by name, so the prefix may be read through
another URL: a bucket, or its FUSE mount), the size and MD5 of the run's final weights,
and why it was promoted (the metric on both sides, the margin, by whom). Records are never
changed or deleted: promoting writes the next sequence number, create-only (on GCS a
precondition the server checks; on a disk link(2), or O_EXCL where a FUSE mount lacks it), so
of two promotions racing for one number exactly one lands, and the other reads the winner
and compares again. Records are sealed like commit records (checkpoints.seal): one cut off by
a kill on a FUSE mount never counts. Only use.gate decides what to promote; this module
reads and writes the records.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from runner import storage, strict_json
from runner.rundir.checkpoints import record_seq, seal, unsealed
from runner.rundir.layout import FINAL_WEIGHTS, RunDir, prefix_of

PROMOTED = "promoted"


@dataclass(frozen=True)
class Promotion:
    """One promotion: `run` (a run directory's name in the prefix) holds the promoted model."""

    run: str
    step: int | None  # the run's final step
    weights_size: int  # bytes of its final/model.safetensors
    weights_md5: str  # of its final/model.safetensors (hex); "md5" is the record's own seal
    metric: str  # "test_acc" or "val_acc"; "" when promoted by hand without comparing
    value: float | None  # the run's metric, on its own held-out samples (0..1)
    previous: str | None  # the run promoted before (a name in the prefix), None for the first
    previous_value: float | None  # the previous run's metric on the same samples; None: not measured
    min_improvement: float  # the margin the run had to beat the previous one by
    reason: str  # for people: the comparison, or why there was none
    by: str  # "gate" (at the end of training) or "hand" (runner promote)
    time: float  # Unix seconds

    def to_json(self) -> dict:
        return asdict(self)


def is_promotions_url(url: str) -> bool:
    """Whether `url` names a job's promoted/ folder (what consumers take for "the promoted model")."""
    return url.rstrip("/").rpartition("/")[2] == PROMOTED


class Promotions:
    """The promotion records of the job whose run directories are under `prefix`."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.url = storage.join(prefix, PROMOTED)

    @classmethod
    def beside(cls, run_url: str) -> Promotions | None:
        """The records of the prefix `run_url` is in; None for a run directory at a bucket's root."""
        prefix = prefix_of(run_url)
        return None if prefix is None else cls(prefix)

    def newest(self) -> tuple[int, Promotion | None]:
        """The highest sequence number taken (whole record or not: the next goes above it) and
        the newest promotion that verifies (None: nothing promoted yet)."""
        seqs = sorted(seq for name in storage.list_names(self.url) if (seq := record_seq(name)) is not None)
        for seq in reversed(seqs):
            try:
                record = unsealed(storage.read_bytes(self._record_url(seq)))
            except FileNotFoundError:
                continue
            promotion = _promotion(record)
            if promotion is not None:
                return seqs[-1], promotion
        return max(seqs, default=0), None

    def commit(self, seq: int, promotion: Promotion) -> None:
        """Write `promotion` as record `seq`, create-only: storage.AlreadyExists if another took it."""
        data = strict_json.dumps(seal(promotion.to_json()), indent=1).encode()
        storage.write_bytes(self._record_url(seq), data, create_only=True)

    def run_dir(self, promotion: Promotion) -> RunDir:
        return RunDir(storage.join(self.prefix, promotion.run))

    def weights_changed(self, promotion: Promotion) -> str | None:
        """Why the promoted run's final weights are not what was promoted (gone, or replaced
        since: a run directory started over), or None if they are (size and MD5)."""
        url = storage.join(self.prefix, promotion.run, FINAL_WEIGHTS)
        try:
            size, md5 = weights_identity(url)
        except FileNotFoundError:
            return f"{url} is gone"
        if (size, md5) != (promotion.weights_size, promotion.weights_md5):
            return (
                f"{url} changed since it was promoted ({size} bytes, MD5 {md5}; "
                f"promoted: {promotion.weights_size}, {promotion.weights_md5})"
            )
        return None

    def _record_url(self, seq: int) -> str:
        return storage.join(self.url, f"{seq:010d}.json")


def weights_identity(url: str) -> tuple[int, str]:
    """Size and MD5 of the weights at `url`: the store's own MD5 where it keeps one (GCS), so
    checking a promoted model in a bucket does not download it; FileNotFoundError if none."""
    size, md5 = storage.stored_size_and_md5(url)
    if md5 is None:
        data = storage.read_bytes(url)
        size, md5 = len(data), storage.md5(data)
    return size, md5


def _promotion(record: dict | None) -> Promotion | None:
    # Keys a later runner may add are left out; a record lacking one this runner needs is no promotion.
    try:
        return Promotion(**{f.name: record[f.name] for f in fields(Promotion)}) if record is not None else None
    except KeyError:
        return None
