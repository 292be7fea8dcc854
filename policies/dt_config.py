"""Configuration of the Decision Transformer policy (the original DT / Hugging Face architecture)."""

from __future__ import annotations

from dataclasses import dataclass

from .policy_config import PolicyConfig

ACTIVATIONS = ("relu", "gelu_new", "gelu")


@dataclass(frozen=True)
class DTPolicyConfig(PolicyConfig):
    kind: str = "dt"
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
    layer_norm_epsilon: float = 1e-5
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    position_bias: bool = True
    """Hugging Face adds wpe[0] to every token (position ids are all zero); the original DT has no wpe."""
    n_positions: int = 1024
    action_tanh: bool = True

    def __post_init__(self):
        super().__post_init__()
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
