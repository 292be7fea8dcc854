"""Session: step a bundle on a backend, B slots at once, each slot resetting on its own."""

from __future__ import annotations

import numpy as np

from policyrt.bundle import Bundle, Manifest
from policyrt.contract import OBS, PREV_ACTION, RESET, REWARD, TARGET_RETURN

from .backend import Backend


class Session:
    """`step(obs, reward, prev_action)` -> action; recurrent state stays inside the backend.

    obs is [obs_dim] (batch 1) or [B, obs_dim]. `prev_action` defaults to the last action this session
    returned (zero after a reset); a controller whose safety chain changed the action passes what it
    actually applied. The graph's own `prev_action` input buffer is where that default lives: no
    second copy. Pass `out=` to write the action into a buffer of yours and allocate nothing.
    """

    def __init__(self, bundle: Bundle, backend: Backend):
        self.bundle = bundle
        self.backend = backend
        self.manifest: Manifest = bundle.manifest
        self.batch_size = backend.batch_size
        self._inputs = backend.inputs
        self.steps = 0
        self._resetting = bool(self._inputs[RESET].any())  # backends start with every slot resetting

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def reset(self, mask=None) -> None:
        """Start a new episode in every slot (mask=None) or in the slots where `mask` is True."""
        if mask is None:
            mask = np.ones(self.batch_size, bool)
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (self.batch_size,):
            raise ValueError(f"reset mask must have shape ({self.batch_size},), got {mask.shape}")
        self._inputs[RESET] |= mask
        self._resetting = True
        self.backend.reset_state(mask)

    def set_target_return(self, value, mask=None) -> None:
        """Commanded return for return-conditioned policies; read when a slot next resets."""
        target = self._inputs[TARGET_RETURN]
        if mask is None:
            target[:] = value
        else:
            target[np.asarray(mask, dtype=bool)] = value

    def step(self, obs, reward=0.0, prev_action=None, out: np.ndarray | None = None) -> np.ndarray:
        single = self._write(OBS, obs, self.manifest.obs_dim)
        self._inputs[REWARD][:] = reward
        if prev_action is None:
            prev = self._inputs[PREV_ACTION]
            np.copyto(prev, self.backend.action)  # the action of the last step
            if self._resetting:
                # The graph ignores a resetting row's prev_action by multiplying it with zero, which
                # cannot clear a NaN that a broken step left in its last action.
                prev[self._inputs[RESET]] = 0.0
        else:
            self._write(PREV_ACTION, prev_action, self.manifest.act_dim)
        self.backend.run()
        if self._resetting:
            self._inputs[RESET][:] = False
            self._resetting = False
        action = self.backend.action
        self.steps += 1
        result = action[0] if single else action
        if out is None:
            return result.copy()
        np.copyto(out, result)
        return out

    def _write(self, name: str, value, dim: int) -> bool:
        """Copy a host array into the bound input buffer; True if it came without a batch dimension."""
        value = np.asarray(value)
        if value.dtype.kind != "f":
            raise ValueError(f"{name} must be a float array, got dtype {value.dtype}")
        if value.shape == (dim,) and self.batch_size == 1:
            self._inputs[name][0] = value
            return True
        if value.shape != (self.batch_size, dim):
            expected = f"({dim},) or ({self.batch_size}, {dim})" if self.batch_size == 1 else f"({self.batch_size}, {dim})"
            raise ValueError(f"{name} has shape {value.shape}, expected {expected}")
        self._inputs[name][:] = value  # a float array (checked above): the same cast as copyto's same_kind
        return False

    def state(self) -> dict[str, np.ndarray]:
        return self.backend.state()

    def close(self) -> None:
        """Close the backend, then the bundle (a .tar's unpacked copy is removed)."""
        self.backend.close()
        self.bundle.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
