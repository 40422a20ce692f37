"""The job spec's types: one immutable pydantic model per TOML table, and JobSpec, the whole spec.

Unknown keys are refused (extra="forbid"), values are checked where declared, and each
field's comment says what it means. Reading TOML, `--set` overrides, error messages and
the rules for resuming are in runner/spec.py.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from runner.data.augment import AUGMENTATIONS
from runner.data.datasets import DATASETS, OWN_FILES, Options
from runner.models.registry import MODELS, known_model, torchvision_models
from runner.models.user import check_ref, is_user_model

# A DNS label, because the name becomes the name of Kubernetes objects.
NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(_Table):
    dataset: str
    root: str = "data"  # torchvision's layout below it, e.g. data/MNIST/raw/
    download: bool = True
    val_fraction: float = Field(0.1, ge=0, lt=1)
    # Augmentation of each training batch on the device (data/augment.py): "flip", "crop"
    # (with padding), "translate". Off by default.
    augment: list[str] = []
    # dataset = "imagefolder" (README, "Bringing your own data"): images fitted into [H, W] (n: [n, n]),
    # channels (0: 3), unreadable images refused (else skipped), a single folder's test split, the cache.
    image_size: list[int] = []
    channels: Literal[0, 1, 3] = 0
    strict: bool = False
    test_fraction: float = Field(0.2, gt=0, lt=1)
    cache: str = ""
    # Resume although the data changed since the checkpoint (the run refuses it otherwise).
    accept_changes: bool = False

    @field_validator("image_size", mode="before")
    @classmethod
    def _image_size(cls, v: Any) -> Any:
        v = [v, v] if isinstance(v, int) and not isinstance(v, bool) else v
        if v and not (isinstance(v, list) and len(v) == 2 and all(type(n) is int and 1 <= n <= 8192 for n in v)):
            raise ValueError(f"{v!r} is not an image size; give an int (e.g. 64) or [height, width], each 1..8192")
        return v

    @model_validator(mode="after")
    def _own_files_only(self) -> DataSpec:
        if self.dataset in OWN_FILES and not self.image_size:
            raise ValueError(
                f"image_size: required for dataset = '{self.dataset}' (the size images are fitted into), e.g. 64"
            )
        given = [k for k in ("image_size", "channels") if getattr(self, k)]
        if self.dataset not in OWN_FILES and given:
            raise ValueError(
                f"{' and '.join(given)}: only for your own image files (dataset = 'imagefolder'); "
                f"'{self.dataset}' has its own shape: remove {' and '.join(given)}"
            )
        return self

    def options(self) -> Options:
        """What the data set's loader is told besides root and download."""
        size = (self.image_size[0], self.image_size[1]) if self.image_size else None
        return Options(size, self.channels or 3, self.strict, self.test_fraction, self.cache)

    @field_validator("augment")
    @classmethod
    def _known_augmentations(cls, v: list[str]) -> list[str]:
        unknown = [name for name in v if name not in AUGMENTATIONS]
        if unknown:
            raise ValueError(f"unknown augmentation {', '.join(map(repr, unknown))}; known: {', '.join(AUGMENTATIONS)}")
        if len(set(v)) != len(v):
            raise ValueError("an augmentation is listed twice")
        return v

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        if v not in DATASETS:
            raise ValueError(f"unknown dataset '{v}'{did_you_mean(v, DATASETS)}; known: {', '.join(DATASETS)}")
        return v


class CheckpointSpec(_Table):
    dir: str = Field(min_length=1)  # local path or fsspec URL (gs://bucket/prefix); defaults to runs/<name>
    every_steps: int = Field(0, ge=0)  # 0: off
    every_seconds: float = Field(300.0, ge=0)  # 0: off; Colab disconnects without warning
    keep: int = Field(3, ge=1)  # newest checkpoints kept (plus the one a run resumed from)


QUANTITY_CPU = r"^\d+(\.\d+)?m?$"  # Kubernetes quantities: "2", "500m"
QUANTITY_MEMORY = r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"  # "8Gi"


class ResourcesSpec(_Table):
    """What the job asks of a cluster (Kubernetes backend)."""

    gpus: int = Field(0, ge=0, le=16)  # nvidia.com/gpu
    accelerator: str = ""  # GKE's cloud.google.com/gke-accelerator, e.g. "nvidia-l4"
    spot: bool = False  # run on spot (preemptible) nodes
    cpu: str = Field("2", pattern=QUANTITY_CPU)
    memory: str = Field("8Gi", pattern=QUANTITY_MEMORY)
    retries: int = Field(6, ge=0)  # failures allowed (backoffLimit); preemptions never count
    deadline_hours: float = Field(72.0, gt=0)  # activeDeadlineSeconds
    ttl_hours: float = Field(24.0, ge=0)  # finished Jobs are deleted after this
    grace_seconds: int = Field(30, ge=5)  # time from SIGTERM to SIGKILL: the emergency save must fit
    service_account: str = ""  # Kubernetes service account (bound to a Google one: Workload Identity)
    gcs_secret: str = ""  # or a Secret holding a Google service-account key as key.json
    # Distributed training (torchrun): `nodes` pods (or machines) of `procs_per_node` processes
    # each; 0 means one per GPU in `gpus`, or 1 without GPUs. batch_size is the global batch.
    nodes: int = Field(1, ge=1, le=1024)
    procs_per_node: int = Field(0, ge=0, le=256)
    queue: str = Field("", pattern=r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)?$")  # Kueue LocalQueue, if any

    @field_validator("cpu", "memory", mode="before")
    @classmethod
    def _quantity(cls, v: Any) -> Any:
        # A bare number is a quantity too, as in a manifest (`cpu = 2`, `--set resources.cpu=1`).
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    @property
    def procs(self) -> int:
        """Processes per node: `procs_per_node`, else one per GPU, else 1."""
        return self.procs_per_node or max(self.gpus, 1)

    @property
    def world_size(self) -> int:
        """Processes in the whole job (torchrun's WORLD_SIZE)."""
        return self.nodes * self.procs


class ImageSpec(_Table):
    repository: str = Field("runner", min_length=1)  # e.g. us-docker.pkg.dev/my-project/ml/runner
    base: str = "python:3.11-slim-bookworm"  # a Python image the Dockerfile installs torch into (docs/image.md)


class ScheduleSpec(_Table):
    cron: str = ""  # "0 3 * * *": re-run on this schedule (a CronJob); "" = not scheduled
    time_zone: str = "Etc/UTC"
    starting_deadline_s: int = Field(3600, ge=10)  # a run that could not start by then is skipped

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, v: str) -> str:
        if v and len(v.split()) != 5 and not v.startswith("@"):
            raise ValueError(f"'{v}' is not a cron schedule: five fields, e.g. \"0 3 * * *\"")
        return v


class PromoteSpec(_Table):
    """The promotion gate at the end of a run (use/gate.py): promote the run if its `metric`
    beats the job's promoted model's, on this run's held-out samples, by more than `min_improvement`."""

    enabled: bool = False
    metric: Literal["test_acc", "val_acc"] = "test_acc"
    min_improvement: float = Field(0.0, ge=0, lt=1)  # absolute: 0.005 is half a percentage point


class TrainSpec(_Table):
    """The fields the training engine reads (and nothing else)."""

    epochs: PositiveInt = 10
    lr: float = Field(1e-3, gt=0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd only
    weight_decay: float = Field(0.0, ge=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    batch_size: int = Field(128, ge=1, le=65536)
    seed: int = Field(0, ge=0, lt=2**32)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # torch.compile the model. Off by default: compiling takes tens of seconds, which pays
    # back on a GPU over a long run; on a CPU it measured slower for the seed models.
    compile: bool = False


class JobSpec(TrainSpec):
    name: str
    model: str  # a built-in or torchvision name, or the user's "package.module:factory"
    model_options: dict[str, Any] = {}
    # The user model's files and packages (models/user.py), relative to the spec's folder;
    # absolute once loaded, so the saved spec finds them (in an image: backends/image.py).
    code: list[str] = []
    device: str = "auto"
    threads: int = Field(0, ge=0, le=1024)  # CPU threads; 0 = the cores this process may use
    # Start a new run from finished weights: a run directory (path or URL), "previous" (the
    # newest finished run beside this one), or "promoted" (the job's promoted model).
    init_from: str = ""
    data: DataSpec
    checkpoint: CheckpointSpec
    resources: ResourcesSpec = ResourcesSpec()
    image: ImageSpec = ImageSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    promote: PromoteSpec = PromoteSpec()

    @model_validator(mode="after")
    def _val_acc_needs_val_samples(self) -> JobSpec:
        if self.promote.enabled and self.promote.metric == "val_acc" and self.data.val_fraction == 0:
            raise ValueError(
                'promote.metric = "val_acc" needs validation samples, but data.val_fraction = 0; '
                "use test_acc or hold some out"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _default_run_dir(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and isinstance(raw.get("name"), str):
            ckpt = raw.get("checkpoint", {})
            if isinstance(ckpt, dict) and "dir" not in ckpt:
                raw = {**raw, "checkpoint": {**ckpt, "dir": f"runs/{raw['name']}"}}
        return raw

    @field_validator("name")
    @classmethod
    def _dns_label(cls, v: str) -> str:
        if not NAME_RE.fullmatch(v):
            raise ValueError(
                f"'{v}' must be lowercase letters, digits and '-' (at most 63, starting and ending "
                "with a letter or digit), because it names Kubernetes objects"
            )
        return v

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        if is_user_model(v):
            return check_ref(v)
        if not known_model(v):
            raise ValueError(
                f"unknown model '{v}'{did_you_mean(v, [*MODELS, *torchvision_models()])}; "
                f"known: {', '.join(MODELS)}, any torchvision classifier (e.g. resnet18), "
                'or your own "module:factory"'
            )
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not DEVICE_RE.fullmatch(v):
            raise ValueError(f"unknown device '{v}'; expected auto, cpu, cuda, cuda:N or mps")
        return v
