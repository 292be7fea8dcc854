"""Configuration of the xLSTM policy: dimensions, block stack, and the normalization baked into it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class XLSTMPolicyConfig:
    obs_dim: int
    act_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    obs_mean: tuple[float, ...] = ()
    """Observation normalization; empty means zeros (mean) and ones (std)."""
    obs_std: tuple[float, ...] = ()
    embedding_dim: int = 128
    num_blocks: int = 4
    num_heads: int = 4
    slstm_at: tuple[int, ...] = ()
    """Block indices that are sLSTM blocks, as in xlstm's `xLSTMBlockStackConfig.slstm_at`."""
    conv1d_kernel_size: int = 4
    proj_factor: float = 2.0
    qkv_proj_blocksize: int = 4
    context_length: int = 256
    """Longest sequence the parallel (training) form sees; the step form has no such limit."""
    return_scale: float = 1000.0
    """Return-to-go is divided by this before it enters the token."""
    target_return: float = 1000.0
    """Default commanded return at reset (the step graph's `target_return` input overrides it)."""
    kind: str = field(default="xlstm")

    def __post_init__(self):
        if len(self.action_low) != self.act_dim or len(self.action_high) != self.act_dim:
            raise ValueError(f"action bounds must have act_dim={self.act_dim} entries")
        for name in ("obs_mean", "obs_std"):
            value = getattr(self, name)
            if value and len(value) != self.obs_dim:
                raise ValueError(f"{name} has {len(value)} entries, obs_dim is {self.obs_dim}")
        if any(i >= self.num_blocks for i in self.slstm_at):
            raise ValueError(f"slstm_at {self.slstm_at} names a block >= num_blocks={self.num_blocks}")

    @property
    def token_dim(self) -> int:
        return self.obs_dim + self.act_dim + 2  # obs, prev_action, reward, return-to-go

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> XLSTMPolicyConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown xLSTM policy config field(s): {', '.join(unknown)}")
        for key in ("action_low", "action_high", "obs_mean", "obs_std", "slstm_at"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)

    def stack_config(self):
        """The equivalent `xlstm.xLSTMBlockStackConfig` (the package owns the block parameter layout)."""
        from xlstm import (
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
                )
            )
        slstm = None
        if self.slstm_at:
            slstm = sLSTMBlockConfig(
                slstm=sLSTMLayerConfig(
                    backend="vanilla",
                    num_heads=self.num_heads,
                    conv1d_kernel_size=self.conv1d_kernel_size,
                    bias_init="powerlaw_blockdependent",
                ),
                feedforward=None,
            )
        return xLSTMBlockStackConfig(
            mlstm_block=mlstm,
            slstm_block=slstm,
            context_length=self.context_length,
            num_blocks=self.num_blocks,
            embedding_dim=self.embedding_dim,
            slstm_at=list(self.slstm_at),
        )
