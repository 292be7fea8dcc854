"""What every export step module shares: the state table and its initial values.

A step module has `specs: list[StateSpec]`, `initial_states(batch)` and
`forward(obs, prev_action, reward, target_return, reset, *states) -> (action, *next_states)`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StateSpec:
    name: str
    shape: tuple[int, ...]  # without the batch dimension
    init: float = 0.0
    dtype: str = "float32"  # float32, or int32 for counters (never int64: TensorRT I/O limits)


def initial_states(specs: list[StateSpec], batch: int):
    import torch

    return [torch.full((batch, *s.shape), s.init, dtype=getattr(torch, s.dtype)) for s in specs]
