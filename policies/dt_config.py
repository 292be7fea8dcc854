"""Configuration of the Decision Transformer policy (the original DT / Hugging Face architecture)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

ACTIVATIONS = ("relu", "gelu_new", "gelu")


@dataclass(frozen=True)
class DTPolicyConfig:
    obs_dim: int
    act_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    obs_mean: tuple[float, ...] = ()
    """Observation normalization baked into the graph; empty means zeros (mean) and ones (std)."""
    obs_std: tuple[float, ...] = ()
    hidden_size: int = 128
    n_layer: int = 3
    n_head: int = 1
    n_inner: int | None = None
    """MLP width; None means 4 * hidden_size, as in GPT-2."""
    activation_function: str = "relu"
    max_ep_len: int = 1000
    """Size of the timestep embedding table; later timesteps are clamped to max_ep_len - 1."""
    context: int = 20
    """K: timesteps in the attention window (3K tokens)."""
    return_scale: float = 1000.0
    """Return-to-go is divided by this (1000 for MuJoCo locomotion in the original work)."""
    target_return: float = 1000.0
    """Default commanded return at reset (the step graph's `target_return` input overrides it)."""
    layer_norm_epsilon: float = 1e-5
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    position_bias: bool = True
    """Hugging Face adds wpe[0] to every token (position ids are all zero); the original DT has no wpe."""
    n_positions: int = 1024
    action_tanh: bool = True
    kind: str = field(default="dt")

    def __post_init__(self):
        if len(self.action_low) != self.act_dim or len(self.action_high) != self.act_dim:
            raise ValueError(f"action bounds must have act_dim={self.act_dim} entries")
        for name in ("obs_mean", "obs_std"):
            value = getattr(self, name)
            if value and len(value) != self.obs_dim:
                raise ValueError(f"{name} has {len(value)} entries, obs_dim is {self.obs_dim}")
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(f"activation_function {self.activation_function!r} not supported ({', '.join(ACTIVATIONS)})")
        if self.hidden_size % self.n_head:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by n_head {self.n_head}")
        if self.context < 1:
            raise ValueError(f"context must be >= 1, got {self.context}")
        if self.context * 3 > self.n_positions and self.position_bias:
            raise ValueError(f"3 * context = {3 * self.context} tokens exceed n_positions {self.n_positions}")

    @property
    def inner_size(self) -> int:
        return self.n_inner or 4 * self.hidden_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DTPolicyConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown DT policy config field(s): {', '.join(unknown)}")
        for key in ("action_low", "action_high", "obs_mean", "obs_std"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)
