"""PyTorch reference backend: the original step module from the bundle's `reference/` checkpoint.

It is the ground truth `parity.json` was recorded against, behind the same interface as the
deployment backends, so `verify` and `bench` compare like with like. torch is imported here only.
"""

from __future__ import annotations

import numpy as np

from policyrt import contract
from policyrt.bundle import Bundle, BundleError

from .backend import Backend


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, bundle: Bundle, batch_size: int, threads: int = 1):
        super().__init__(bundle, batch_size)
        try:
            import torch
        except ImportError as err:
            raise ImportError("backend 'torch' needs PyTorch: pip install 'policyrt[export]'") from err
        from policyrt.policies.checkpoint import load_checkpoint
        from policyrt.policies.kinds import make_step

        reference = bundle.path / "reference"
        if not (reference / "config.json").is_file():
            raise BundleError(f"{reference}: this bundle carries no PyTorch reference checkpoint")
        torch.set_num_threads(threads)
        policy, _ = load_checkpoint(reference)
        self._torch = torch
        self.step_module = make_step(policy)
        # The step module's arguments, in its order; from_numpy shares memory with the Session's inputs.
        self._feeds = tuple(torch.from_numpy(self.inputs[name]) for name in contract.INPUTS)
        self._state = self.step_module.initial_states(batch_size)

    def run(self) -> None:
        with self._torch.inference_mode():
            action, *self._state = self.step_module(*self._feeds, *self._state)
        np.copyto(self.action, action.numpy())

    def reset_state(self, mask: np.ndarray) -> None:
        rows = self._torch.from_numpy(np.asarray(mask, bool))
        with self._torch.inference_mode():  # the state tensors were made under inference mode
            for spec, tensor in zip(self.step_module.specs, self._state):
                tensor[rows] = spec.init

    def state(self) -> dict[str, np.ndarray]:
        return {s.name: t.numpy().copy() for s, t in zip(self.step_module.specs, self._state)}
