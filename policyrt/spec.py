"""What a robot announces about itself (`Spec`) and the SPEC payload that carries it.

The payload (docs/PROTOCOL.md, section 3.1): float32 obs_dim, act_dim, control_rate_hz, action_low[act_dim],
action_high[act_dim], then a UTF-8 JSON object (robot, obs_names, act_names, num_envs when > 1, and
any key a newer robot adds). policyrt/protocol.py frames it like every other message; this module
owns its content, because the controller core, the results and the sim robot use a Spec without
ever touching a frame.

Board-side module: standard library and numpy only, Python 3.10.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

MAX_NUM_ENVS = 65535  # the SPEC's limit; in practice a batched frame must also fit MAX_FRAME_BYTES

_F32 = np.dtype("<f4")


class SpecError(ValueError):
    """A SPEC payload the specification does not allow; protocol.decode reports it as kind "spec"."""


@dataclass(frozen=True, eq=False)  # eq=False: numpy fields make == ambiguous
class Spec:
    """What a robot announces about itself in SPEC."""

    obs_dim: int
    act_dim: int
    control_rate_hz: float | None = None  # None: the robot has no fixed rate (lockstep sim)
    action_low: np.ndarray | None = None  # float32 [act_dim]; None: -inf
    action_high: np.ndarray | None = None  # float32 [act_dim]; None: +inf
    robot: str = ""  # free-form identity, e.g. the Gymnasium env id
    obs_names: tuple[str, ...] = ()
    act_names: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)  # unknown JSON keys, kept for the curious
    # Environments behind this endpoint. 1 is a classic session (OBS/ACT, and the SPEC's JSON
    # carries no num_envs key, byte-identical to before); > 1 means OBS_BATCH/ACT_BATCH.
    num_envs: int = 1

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        low = self.action_low if self.action_low is not None else np.full(self.act_dim, -np.inf)
        high = self.action_high if self.action_high is not None else np.full(self.act_dim, np.inf)
        return np.asarray(low, np.float32), np.asarray(high, np.float32)


def encode_spec_payload(spec: Spec) -> bytes:
    """The SPEC payload for `spec` (sent once per session, so built fresh)."""
    low, high = spec.bounds()
    floats = np.concatenate(
        [np.array([spec.obs_dim, spec.act_dim, spec.control_rate_hz or 0.0], _F32), low, high]
    ).astype(_F32)
    info = dict(spec.extra)
    info.update(robot=spec.robot, obs_names=list(spec.obs_names), act_names=list(spec.act_names))
    if spec.num_envs != 1:  # absent for one environment: a classic SPEC stays byte-identical
        info["num_envs"] = int(spec.num_envs)
    return floats.tobytes() + json.dumps(info, separators=(",", ":"), allow_nan=False).encode("utf-8")


def decode_spec_payload(frame, offset: int, plen: int) -> tuple[Spec, np.ndarray]:
    """The Spec in the `plen` payload bytes at `offset` of `frame`, and a float32 view of the
    payload's numeric part. Raises SpecError on anything the specification does not allow."""
    if plen < 12:
        raise SpecError(f"SPEC payload of {plen} bytes cannot hold obs_dim, act_dim, rate")
    head = np.frombuffer(frame, _F32, 3, offset)
    obs_f, act_f, rate = (float(v) for v in head)
    for name, v in (("obs_dim", obs_f), ("act_dim", act_f)):
        if not (math.isfinite(v) and v == int(v) and 1 <= v <= 65535):
            raise SpecError(f"{name}={v} is not an integer in 1..65535")
    if not (math.isfinite(rate) and rate >= 0):
        raise SpecError(f"control_rate_hz={rate} must be finite and >= 0")
    obs_dim, act_dim = int(obs_f), int(act_f)
    count = 3 + 2 * act_dim
    if plen < 4 * count:
        raise SpecError(f"SPEC for act_dim={act_dim} needs {4 * count} bytes of floats, has {plen}")
    values = np.frombuffer(frame, _F32, count, offset)
    low, high = values[3 : 3 + act_dim].copy(), values[3 + act_dim :].copy()
    if np.isnan(low).any() or np.isnan(high).any() or (low > high).any():
        raise SpecError(f"action bounds are NaN or low > high: low={low}, high={high}")
    info = _decode_text(bytes(frame[offset + 4 * count : offset + plen]), obs_dim, act_dim)
    spec = Spec(
        num_envs=info.pop("num_envs", 1),
        obs_dim=obs_dim,
        act_dim=act_dim,
        control_rate_hz=rate or None,
        action_low=low,
        action_high=high,
        robot=info.pop("robot", ""),
        obs_names=tuple(info.pop("obs_names", ())),
        act_names=tuple(info.pop("act_names", ())),
        extra=info,
    )
    return spec, values


def _refuse_constant(name: str):
    """json.loads accepts NaN, Infinity and -Infinity, which are not JSON (RFC 8259): refuse them."""
    raise ValueError(f"{name} is not valid JSON")


def _decode_text(text: bytes, obs_dim: int, act_dim: int) -> dict:
    if not text:
        return {}
    try:
        info = json.loads(text.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise SpecError(f"SPEC text is not UTF-8 JSON: {exc}") from None
    if not isinstance(info, dict):
        raise SpecError(f"SPEC text must be a JSON object, got {type(info).__name__}")
    if not isinstance(info.get("robot", ""), str):
        raise SpecError("SPEC 'robot' must be a string")
    for key, dim in (("obs_names", obs_dim), ("act_names", act_dim)):
        names = info.get(key, [])
        if not (isinstance(names, list) and all(isinstance(s, str) for s in names)):
            raise SpecError(f"SPEC '{key}' must be a list of strings")
        if names and len(names) != dim:
            raise SpecError(f"SPEC has {len(names)} {key} for dimension {dim}")
    num_envs = info.get("num_envs", 1)
    if isinstance(num_envs, bool) or not isinstance(num_envs, int) or not 1 <= num_envs <= MAX_NUM_ENVS:
        raise SpecError(f"SPEC 'num_envs' must be an integer in 1..{MAX_NUM_ENVS}, got {num_envs!r}")
    return info
