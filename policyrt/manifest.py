"""The manifest schema: every field of manifest.json read and checked (docs/BUNDLE.md, "manifest.json").

`read_fields(doc)` returns the values a policyrt.bundle.Manifest holds, or raises ValueError naming
the field and what is wrong with it ("action_low[0] is NaN: bounds must be finite"); policyrt.bundle
puts the file in front. A manifest that passes holds values the runtime can use as they are: finite
bounds with low < high, dims that are integers >= 1, a positive control rate, state rows a graph can
carry (policyrt.contract.StateTensor.from_dict checks each row). Whether the graph agrees with these
values is checked where the graph is loaded (policyrt.contract.check_graph_io).
numpy only (board-side).
"""

from __future__ import annotations

import math

import numpy as np

from .contract import FLOAT32_MAX, INPUTS, StateTensor, is_json_number

SCHEMA_VERSION = 1
# Far above any robot's observation or action (MuJoCo's largest are a few hundred), so that a manifest
# cannot make a backend allocate gigabytes of host buffers before its graph is checked.
MAX_DIM = 1 << 20


def read_fields(doc) -> dict:
    """The checked values of a manifest document, by Manifest field name (raw excluded)."""
    if not isinstance(doc, dict):
        raise ValueError(f"must be a JSON object, not {type(doc).__name__}")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(f"unknown schema_version {version!r} (this policyrt reads {SCHEMA_VERSION})")
    policy = _get(doc, "policy")
    if not isinstance(policy, dict):
        raise ValueError(f"policy is {_show(policy)}: must be an object {{kind, config}}")
    obs_dim, act_dim = _dim(doc, "obs_dim"), _dim(doc, "act_dim")
    action_low, action_high = _bounds(doc, "action", act_dim, "act_dim", strict=True)
    obs_range = _bounds(doc, "obs", obs_dim, "obs_dim", strict=False) if _has_obs_range(doc) else (None, None)
    return {
        "name": _text(doc, "name"),
        "kind": _text(policy, "kind", "policy.kind"),
        "obs_dim": obs_dim,
        "act_dim": act_dim,
        "action_low": action_low,
        "action_high": action_high,
        "state": _state(_get(doc, "state")),
        "inputs": _inputs(_get(doc, "inputs")),
        "target_return": _finite(_get(doc, "target_return"), "target_return", "must be a finite float32"),
        "control_rate_hz": _rate(doc.get("control_rate_hz")),
        "env_id": _optional_text(doc.get("env_id"), "env_id"),
        "obs_names": _names(doc, "obs_names", obs_dim, "obs_dim"),
        "action_names": _names(doc, "action_names", act_dim, "act_dim"),
        "obs_low": obs_range[0],
        "obs_high": obs_range[1],
    }


def _get(doc: dict, key: str):
    if key not in doc:
        raise ValueError(f"missing field {key!r}")
    return doc[key]


def _show(value) -> str:
    """A value as a message shows it: NaN and infinities by name, strings quoted."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _text(doc: dict, key: str, field: str | None = None) -> str:
    value = _get(doc, key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field or key} is {_show(value)}: must be a non-empty string")
    return value


def _optional_text(value, field: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{field} is {_show(value)}: must be null or a string")
    return value


def _dim(doc: dict, key: str) -> int:
    value = _get(doc, key)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_DIM:
        raise ValueError(f"{key} is {_show(value)}: must be an integer from 1 to {MAX_DIM}")
    return value


def _finite(value, field: str, why: str) -> float:
    """A number that stays finite as the float32 the runtime computes in (1e39 does not)."""
    if not is_json_number(value) or not math.isfinite(value) or abs(value) > FLOAT32_MAX:
        raise ValueError(f"{field} is {_show(value)}: {why}")
    return float(value)


def _rate(value) -> float | None:
    if value is None:
        return None
    if not is_json_number(value) or not math.isfinite(value) or not 0 < value <= FLOAT32_MAX:
        raise ValueError(f"control_rate_hz is {_show(value)}: must be null or a finite rate > 0 (Hz)")
    return float(value)


def _vector(doc: dict, key: str, n: int, dim_field: str) -> np.ndarray:
    values = _get(doc, key)
    if not isinstance(values, list) or len(values) != n:
        count = f"{len(values)} values" if isinstance(values, list) else _show(values)
        raise ValueError(f"{key} has {count}: expected a list of {n} numbers ({dim_field})")
    for i, value in enumerate(values):
        _finite(value, f"{key}[{i}]", "bounds must be finite (in float32)")
    return np.asarray(values, dtype=np.float32)


def _has_obs_range(doc: dict) -> bool:
    """obs_low/obs_high are optional (a policy imported without its data has none), but come together."""
    present = [key for key in ("obs_low", "obs_high") if doc.get(key) is not None]
    if len(present) == 1:
        raise ValueError(f"{present[0]} is given without {({'obs_low', 'obs_high'} - set(present)).pop()}: "
                         "the observation range needs both or neither")
    return bool(present)


def _bounds(doc: dict, prefix: str, n: int, dim_field: str, strict: bool) -> tuple[np.ndarray, np.ndarray]:
    """`<prefix>_low`, `<prefix>_high`: n finite numbers each, low < high (strict) or low <= high."""
    low_key, high_key = f"{prefix}_low", f"{prefix}_high"
    low, high = _vector(doc, low_key, n, dim_field), _vector(doc, high_key, n, dim_field)
    bad = np.flatnonzero(~(low < high) if strict else ~(low <= high))
    if bad.size:
        i = int(bad[0])
        relation = "below" if strict else "at most"
        raise ValueError(f"{low_key}[{i}] ({low[i]:g}) is not {relation} {high_key}[{i}] ({high[i]:g})")
    return low, high


def _state(rows) -> tuple[StateTensor, ...]:
    if not isinstance(rows, list):
        raise ValueError(f"state is {_show(rows)}: must be a list of {{name, shape, dtype, init}}")
    table, seen = [], {}
    for i, row in enumerate(rows):
        try:
            tensor = StateTensor.from_dict(row)
        except KeyError as err:
            raise ValueError(f"state[{i}]: missing key {err.args[0]!r}") from None
        except ValueError as err:
            raise ValueError(f"state[{i}]: {err}") from None
        if tensor.name in seen:
            raise ValueError(f"state[{i}]: name {tensor.name!r} is already state[{seen[tensor.name]}]'s")
        seen[tensor.name] = i
        table.append(tensor)
    return tuple(table)


def _inputs(value) -> tuple[str, ...]:
    if value != list(INPUTS):
        raise ValueError(f"inputs is {_show(value)}: must be {list(INPUTS)} (the step graph's contract)")
    return tuple(value)


def _names(doc: dict, key: str, n: int, dim_field: str) -> tuple[str, ...] | None:
    """Optional channel names: null or [] for none, else one string per channel."""
    value = doc.get(key)
    if not value:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key} is {_show(value)}: must be null or a list of strings")
    if len(value) != n:
        raise ValueError(f"{key} has {len(value)} names: expected {n} ({dim_field})")
    return tuple(value)
