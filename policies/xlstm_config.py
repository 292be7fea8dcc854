"""Configuration of the xLSTM policy: dimensions, block stack, and the normalization baked into it.

`stack_config()` is the one place that turns it into the xlstm package's `xLSTMBlockStackConfig`; the
package owns the block parameter layout. The flat block fields describe the mLSTM blocks (all mLSTM
blocks of an `xLSTMBlockStack` share one config, as do all sLSTM blocks); `slstm_block` describes the
sLSTM blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

from .policy_config import PolicyConfig

ACTION_SQUASHES = ("tanh", "none")
FEEDFORWARD_ACTIVATIONS = ("gelu", "relu", "relu^2", "sigmoid", "swish", "selu")  # xlstm's _act_fn_registry


@dataclass(frozen=True)
class FeedForwardSpec:
    """A block's gated feed-forward part (xlstm's `FeedForwardConfig`, ff_type "ffn_gated")."""

    proj_factor: float = 1.3
    act_fn: str = "gelu"
    bias: bool = False
    round_proj_up_dim_up: bool = True
    round_proj_up_to_multiple_of: int = 64

    def __post_init__(self):
        if self.act_fn not in FEEDFORWARD_ACTIVATIONS:
            raise ValueError(f"feedforward act_fn {self.act_fn!r} is not one of {FEEDFORWARD_ACTIVATIONS}")


@dataclass(frozen=True)
class SLSTMBlockSpec:
    """The sLSTM blocks of the stack (xlstm's `sLSTMBlockConfig` / `sLSTMLayerConfig`, inference-relevant part)."""

    num_heads: int = 4
    conv1d_kernel_size: int = 4
    """0 means no causal convolution (the i/f gates then read the normed input directly)."""
    group_norm_weight: bool = True
    feedforward: FeedForwardSpec | None = None
    """The block's gated feed-forward part after the sLSTM layer; None: none."""


@dataclass(frozen=True)
class XLSTMPolicyConfig(PolicyConfig):
    kind: str = "xlstm"
    embedding_dim: int = 128
    num_blocks: int = 4
    num_heads: int = 4
    """Heads of the mLSTM blocks (and of the sLSTM blocks when `slstm_block` is None)."""
    slstm_at: tuple[int, ...] = ()
    """Block indices that are sLSTM blocks, as in xlstm's `xLSTMBlockStackConfig.slstm_at`."""
    conv1d_kernel_size: int = 4
    """Causal-conv kernel of the mLSTM blocks (and of the sLSTM blocks when `slstm_block` is None)."""
    proj_factor: float = 2.0
    """mLSTM up-projection factor; inner = proj_factor * embedding_dim rounded as the next two fields say."""
    qkv_proj_blocksize: int = 4
    round_proj_up_dim_up: bool = True
    round_proj_up_to_multiple_of: int = 64
    proj_bias: bool = False
    """Biases in the mLSTM projections (xlstm's stack-level `bias`)."""
    slstm_block: SLSTMBlockSpec | None = None
    """The sLSTM blocks; None: `num_heads` and `conv1d_kernel_size` above and no feed-forward part (the
    layout of configs written before this field existed)."""
    add_post_blocks_norm: bool = True
    context_length: int = 256
    """Longest sequence the parallel (training) form sees; the step form has no such limit."""
    action_squash: str = "tanh"
    """"tanh": action = tanh(head) scaled into the bounds; "none": action = head (imported linear heads)."""

    def __post_init__(self):
        super().__post_init__()
        if any(i >= self.num_blocks for i in self.slstm_at):
            raise ValueError(f"slstm_at {self.slstm_at} names a block >= num_blocks={self.num_blocks}")
        if self.action_squash not in ACTION_SQUASHES:
            raise ValueError(f"action_squash {self.action_squash!r} is not one of {ACTION_SQUASHES}")

    @property
    def token_dim(self) -> int:
        return self.obs_dim + self.act_dim + 2  # obs, prev_action, reward, return-to-go

    @property
    def slstm_spec(self) -> SLSTMBlockSpec:
        return self.slstm_block or SLSTMBlockSpec(num_heads=self.num_heads, conv1d_kernel_size=self.conv1d_kernel_size)

    def stack_config(self):
        """The equivalent `xlstm.xLSTMBlockStackConfig` (the package owns the block parameter layout)."""
        from xlstm import (
            FeedForwardConfig,
            mLSTMBlockConfig,
            mLSTMLayerConfig,
            sLSTMBlockConfig,
            sLSTMLayerConfig,
            xLSTMBlockStackConfig,
        )

        all_slstm = len(self.slstm_at) == self.num_blocks
        mlstm = None
        if not all_slstm:
            mlstm = mLSTMBlockConfig(
                mlstm=mLSTMLayerConfig(
                    conv1d_kernel_size=self.conv1d_kernel_size,
                    qkv_proj_blocksize=self.qkv_proj_blocksize,
                    num_heads=self.num_heads,
                    proj_factor=self.proj_factor,
                    round_proj_up_dim_up=self.round_proj_up_dim_up,
                    round_proj_up_to_multiple_of=self.round_proj_up_to_multiple_of,
                )
            )
        slstm = None
        if self.slstm_at:
            spec = self.slstm_spec
            ffn = spec.feedforward
            slstm = sLSTMBlockConfig(
                slstm=sLSTMLayerConfig(
                    backend="vanilla",  # CPU-capable; CUDA-trained weights are converted on import
                    num_heads=spec.num_heads,
                    conv1d_kernel_size=spec.conv1d_kernel_size,
                    group_norm_weight=spec.group_norm_weight,
                    bias_init="powerlaw_blockdependent",
                ),
                feedforward=None if ffn is None else FeedForwardConfig(
                    proj_factor=ffn.proj_factor,
                    act_fn=ffn.act_fn,
                    bias=ffn.bias,
                    round_proj_up_dim_up=ffn.round_proj_up_dim_up,
                    round_proj_up_to_multiple_of=ffn.round_proj_up_to_multiple_of,
                ),
            )
        return xLSTMBlockStackConfig(
            mlstm_block=mlstm,
            slstm_block=slstm,
            context_length=self.context_length,
            num_blocks=self.num_blocks,
            embedding_dim=self.embedding_dim,
            add_post_blocks_norm=self.add_post_blocks_norm,
            bias=self.proj_bias,
            slstm_at=list(self.slstm_at),
        )

