"""JSON that every parser reads: a non-finite number (a diverged loss) is written as null.

Python's json module writes NaN and Infinity as bare tokens, which are not JSON (RFC 8259,
section 6): JavaScript's JSON.parse, jq and Go's encoding/json refuse the whole document.
Everything runner writes as JSON (metrics.jsonl, status.json, commit records, weights
metadata, `--json` output) goes through `dumps`.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> Any:
    """`value` with every non-finite float, however deep in dicts, lists and tuples, as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(v) for key, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """json.dumps, strict: non-finite numbers become null (and anything else non-JSON raises)."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)
