"""What the config of every policy kind shares, and its stored layout.

A kind's config is a frozen dataclass deriving from `PolicyConfig`: it adds its architecture fields
(all with defaults), its own checks in `__post_init__` (calling `super().__post_init__()` first) and
sets `kind` to its registry name (policies/kinds.py). `to_dict()` / `from_dict()` are the layout kept in
a checkpoint's config.json and a bundle manifest's `policy.config`: `from_dict` takes any subset of
the fields (layouts written before a field existed get its default), refuses unknown fields by name
and turns JSON lists back into tuples and nested objects back into their spec dataclasses, all from
the field annotations, so a new field needs no change here.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class PolicyConfig:
    obs_dim: int
    act_dim: int
    action_low: tuple[float, ...]
    """Per action dimension: the head's range, and what the controller clips to."""
    action_high: tuple[float, ...]
    obs_mean: tuple[float, ...] = ()
    """Observation normalization baked into the graph; empty means zeros (mean) and ones (std)."""
    obs_std: tuple[float, ...] = ()
    obs_low: tuple[float, ...] = ()
    """Per observation channel: the training data's minimum and maximum; empty means unknown. The
    exporter records them in the manifest, where the controller's observation guard reads them."""
    obs_high: tuple[float, ...] = ()
    return_scale: float = 1000.0
    """Return-to-go is divided by this before it enters the token (1000 for MuJoCo locomotion in the
    original Decision Transformer work)."""
    target_return: float = 1000.0
    """Default commanded return at reset (the step graph's `target_return` input overrides it)."""
    kind: str = ""
    """The kind's name in policies/kinds.py; each kind's config class sets it as the default."""

    def __post_init__(self):
        own_kind = type(self).__dataclass_fields__["kind"].default
        if self.kind != own_kind:
            raise ValueError(f"kind {self.kind!r} does not match {type(self).__name__} (kind {own_kind!r})")
        if len(self.action_low) != self.act_dim or len(self.action_high) != self.act_dim:
            raise ValueError(f"action bounds must have act_dim={self.act_dim} entries")
        for name in ("obs_mean", "obs_std", "obs_low", "obs_high"):
            value = getattr(self, name)
            if value and len(value) != self.obs_dim:
                raise ValueError(f"{name} has {len(value)} entries, obs_dim is {self.obs_dim}")
        if bool(self.obs_low) != bool(self.obs_high):
            raise ValueError("obs_low and obs_high come together (the data's range) or not at all")
        if any(not lo <= hi for lo, hi in zip(self.obs_low, self.obs_high)):
            raise ValueError(f"obs_low must be <= obs_high in every channel (and finite): {self.obs_low}, {self.obs_high}")

    @property
    def obs_normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) the graph applies to observations: zeros and ones where the fields are empty."""
        return self.obs_mean or (0.0,) * self.obs_dim, self.obs_std or (1.0,) * self.obs_dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        return dataclass_from_dict(cls, data, f"{cls.__dataclass_fields__['kind'].default} policy config")


def dataclass_from_dict(cls, data: dict, what: str, path: str = ""):
    """`cls` from a JSON object: unknown fields are refused (named by `path`, or `what` at the top),
    tuple fields come back from lists, dataclass fields from nested objects."""
    if not isinstance(data, dict):
        raise ValueError(f"{path or what} must be an object, got {data!r}")
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {path or what} field(s): {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    return cls(**{name: _decode(hints[name], value, what, f"{path}.{name}" if path else name)
                  for name, value in data.items()})


def _decode(hint, value, what: str, path: str):
    if value is None:
        return None
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # `X | None`: decode as X
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is tuple:
        return tuple(value)
    if dataclasses.is_dataclass(hint):
        return dataclass_from_dict(hint, value, what, path)
    return value
