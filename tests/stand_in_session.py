"""A stand-in for `policyrt.runtime.Session` while no shipped bundle exists.

It honours the Session contract the controller loop programs against (manifest with dims, bounds
and rate; reset(mask); step(obs, reward, prev_action, out) -> action) with a fixed linear policy
instead of an exported graph, and records its calls so tests can check what the loop did.
`LinearSession.inverted_pendulum()` balances InvertedPendulum-v5 for the full 1000 steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Discrete LQR gain of InvertedPendulum-v5 linearized by central differences of its own step
# (Q = diag(1, 10, 1, 1), R = 1); it holds the pole for 1000/1000 steps from any reset.
PENDULUM_GAIN = np.array([[0.59, 7.59, 1.05, 1.36]], np.float32)


@dataclass(frozen=True)
class StandInManifest:
    obs_dim: int
    act_dim: int
    action_low: np.ndarray
    action_high: np.ndarray
    control_rate_hz: float | None = None


@dataclass
class LinearSession:
    """action = gain @ obs + bias; `calls` logs (kind, obs copy, reward, prev_action copy)."""

    manifest: StandInManifest
    gain: np.ndarray
    bias: np.ndarray | None = None
    batch_size: int = 1
    calls: list = field(default_factory=list)
    record: bool = False

    @classmethod
    def inverted_pendulum(cls, **kwargs) -> LinearSession:
        manifest = StandInManifest(4, 1, np.array([-3.0], np.float32), np.array([3.0], np.float32), 25.0)
        return cls(manifest=manifest, gain=PENDULUM_GAIN, **kwargs)

    def reset(self, mask=None) -> None:
        if self.record:
            self.calls.append(("reset",))

    def step(self, obs, reward=0.0, prev_action=None, out=None) -> np.ndarray:
        """obs [obs_dim] or [batch, obs_dim]; with `out`, the action is written there."""
        obs = np.asarray(obs, np.float32)
        if self.record:
            prev = None if prev_action is None else np.array(prev_action, copy=True)
            self.calls.append(("step", obs.copy(), np.array(reward, copy=True), prev))
        action = obs @ self.gain.T
        if self.bias is not None:
            action = action + self.bias
        if out is None:
            return action
        np.copyto(out, action)
        return out
