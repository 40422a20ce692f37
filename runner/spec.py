"""Job specs: the only code that reads TOML.

A spec is validated once, at load, into immutable typed objects (runner/spec_tables.py);
everything after that trusts it. Errors name the file (or the `--set` override) and the
dotted key. Precedence: `--set` overrides > the TOML file > defaults.
"""

from __future__ import annotations

import contextlib
import copy
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import BaseModel, ValidationError

from runner.errors import UserError
from runner.models.registry import options_type
from runner.models.user import resolve_code
from runner.spec_tables import JobSpec, did_you_mean

__all__ = [
    "JobSpec",
    "check_global_batch",
    "load_spec",
    "parse_override",
    "resolve",
    "resume_conflicts",
    "to_toml",
    "validate_spec",
]

KEY_RE = re.compile(r"[A-Za-z0-9_-]+")  # one key of a dotted --set key


def validate_spec(raw: dict[str, Any], source: str, overridden: Mapping[str, str] | None = None) -> JobSpec:
    """Validate a raw spec dict; errors name `source` (or the --set that caused them)."""
    try:
        spec = JobSpec.model_validate(raw)
        options = options_type(spec.model).model_validate(spec.model_options)
    except ValidationError as e:
        prefix = () if e.title == JobSpec.__name__ else ("model_options",)
        raise UserError(_describe(e, prefix, raw, source, overridden or {})) from None
    keys = ("batch_size", "resources.nodes", "resources.procs_per_node", "resources.gpus")
    origin = next((o for k in keys if (o := _origin(k, source, overridden or {})) != source), source)
    check_global_batch(spec.batch_size, spec.resources.world_size, origin)
    return spec.model_copy(update={"model_options": options.model_dump(mode="json", exclude_unset=False)})


def check_global_batch(batch_size: int, world_size: int, source: str) -> None:
    """UserError unless the global batch divides evenly among `world_size` processes.

    Each process takes batch_size / world_size samples of every global batch, so the data
    order and what the optimizer averages over do not depend on the world size.
    """
    if batch_size % world_size:
        lower, upper = batch_size // world_size * world_size, (batch_size // world_size + 1) * world_size
        raise UserError(
            f"{source}: batch_size: {batch_size} is the global batch, shared by {world_size} processes "
            f"(resources.nodes x processes per node), and must be a multiple of {world_size}; "
            f"use {upper}" + (f" or {lower}" if lower else "")
        )


def _origin(key: str, source: str, overridden: Mapping[str, str]) -> str:
    """The --set that set `key` (or a table above it), else the spec file."""
    return next((f"--set {text}" for o, text in overridden.items() if key == o or key.startswith(o + ".")), source)


def load_spec(path: str, overrides: Sequence[str] = ()) -> JobSpec:
    """Read, override and validate the spec at `path`."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; give the path of a job spec (e.g. jobs/digits.toml)") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the spec ({e.strerror})") from None
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (bad byte at offset {e.start}); save the spec as UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: invalid TOML: {e}") from None
    if not raw:
        raise UserError(f"{path}: the spec is empty; it needs at least name, model and [data] dataset")
    spec = resolve(raw, path, overrides)
    return spec.model_copy(update={"code": resolve_code(spec.code, Path(path).parent, path)}) if spec.code else spec


def resolve(raw: dict[str, Any], source: str, overrides: Sequence[str] = ()) -> JobSpec:
    """`raw` (a spec as read from `source`, left unchanged) with `overrides` applied, validated."""
    raw, overridden = copy.deepcopy(raw), {}
    for text in overrides:
        keys, value = parse_override(text)
        _set(raw, keys, value, text)
        overridden[".".join(keys)] = text
    return validate_spec(raw, source, overridden)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (['a', 'b'], value), the value typed as TOML would type it.

    Values that are not TOML literals are taken as strings, so `--set data.root=/x`
    needs no quotes.
    """
    key, sep, value = text.partition("=")
    keys = key.strip().split(".")
    if not sep or not all(KEY_RE.fullmatch(k) for k in keys):
        raise UserError(f"--set {text}: expected KEY=VALUE with a dotted key, e.g. --set data.root=/data")
    try:
        return keys, tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return keys, value


def _set(raw: dict[str, Any], keys: list[str], value: Any, text: str) -> None:
    table = raw
    for i, key in enumerate(keys[:-1]):
        table = table.setdefault(key, {})
        if not isinstance(table, dict):
            raise UserError(f"--set {text}: '{'.'.join(keys[: i + 1])}' is not a table")
    table[keys[-1]] = value


# What may differ between a checkpoint's spec and the spec resuming it. Anything else
# (model, optimizer, data, batch size, seed, ...) changes what the saved state or its
# position means, so resuming would silently train something else.
MAY_CHANGE_ON_RESUME = (
    *("epochs", "device", "precision", "compile", "threads", "data.root", "data.download", "init_from", "code"),
    *("data.cache", "data.strict", "data.accept_changes"),
    *("checkpoint.", "resources.", "image.", "schedule.", "promote."),
)


def resume_conflicts(saved: Mapping[str, Any], current: JobSpec) -> list[str]:
    """The dotted keys whose values differ in a way a resume cannot honour, as 'key (old -> new)'."""
    # A key added to runner since `saved` was written takes its default there, as here (a
    # saved spec this runner no longer validates is compared as written).
    with contextlib.suppress(ValidationError):
        saved = JobSpec.model_validate(saved).model_dump(mode="json")
    old, new = _flatten(saved), _flatten(current.model_dump(mode="json"))
    return [
        f"{key} ({old.get(key)!r} -> {new.get(key)!r})"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
        and not any(key == k or (k.endswith(".") and key.startswith(k)) for k in MAY_CHANGE_ON_RESUME)
    ]


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping) and key != "model_options":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def to_toml(spec: JobSpec) -> str:
    """The resolved spec as TOML: it loads back to an equal spec."""
    fields = spec.model_dump(mode="json")
    return tomli_w.dumps({"name": fields.pop("name"), "model": fields.pop("model"), **fields})


def _describe(
    error: ValidationError,
    prefix: tuple[str, ...],
    raw: dict[str, Any],
    source: str,
    overridden: Mapping[str, str],
) -> str:
    """All validation errors as one line: `source: dotted.key: reason`."""
    parts = []
    for err in error.errors():
        loc = prefix + tuple(str(p) for p in err["loc"])
        key = ".".join(loc)
        if err["type"] == "extra_forbidden":
            reason = f"unknown key{did_you_mean(loc[-1], _siblings(loc, raw))}"
        elif err["type"] == "missing":
            reason = "missing (required)"
        elif err["type"] == "value_error":
            reason = str(err["ctx"]["error"])
        else:
            reason = f"{err['msg']} (got {err['input']!r})"
        origin = _origin(key, source, overridden)
        parts.append(f"{origin}: {key}: {reason}" if key else f"{origin}: {reason}")  # no key: the spec as a whole
    return "; ".join(parts)


def _siblings(loc: tuple[str, ...], raw: dict[str, Any]) -> list[str]:
    """The keys allowed beside the unknown key at `loc`."""
    model: type[BaseModel] = JobSpec
    for key in loc[:-1]:
        if key == "model_options":
            model = options_type(str(raw.get("model", "")))
            continue
        annotation = model.model_fields[key].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)
