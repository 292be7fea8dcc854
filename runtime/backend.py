"""The backend interface every runtime backend implements (ONNX Runtime, PyTorch reference, TensorRT).

A backend owns the graph's inputs and state buffers for a fixed batch. The Session writes the host
inputs into `inputs` (preallocated numpy arrays, keyed by policyrt.contract.INPUTS), calls `run()`,
and reads `action`. State never leaves the backend: it swaps its own buffers each tick.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from policyrt import contract
from policyrt.bundle import Bundle


class InferenceError(RuntimeError):
    """A step failed inside a backend's library; one line: "<backend> step failed: <reason>"."""


def first_line(exc: BaseException) -> str:
    """An exception's message as one line (libraries like ONNX Runtime add stack dumps below it)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class Backend(ABC):
    name: str = "?"

    def __init__(self, bundle: Bundle, batch_size: int):
        m = bundle.manifest
        self.bundle = bundle
        self.batch_size = batch_size
        self.inputs = contract.host_input_buffers(m.obs_dim, m.act_dim, batch_size, m.target_return)
        self.action = contract.ACTION_OUTPUT.buffer(batch_size, m.obs_dim, m.act_dim)

    @abstractmethod
    def run(self) -> None:
        """One step: read `inputs` and the current state, write `action`, advance the state."""

    @abstractmethod
    def state(self) -> dict[str, np.ndarray]:
        """The current state tensors by manifest name (copies; for verify and debugging, not the hot path)."""

    @abstractmethod
    def reset_state(self, mask: np.ndarray) -> None:
        """Write the manifest's init values into the state of the slots where `mask` is True.

        The graph re-initializes a resetting slot itself, but by multiplying with zero, which cannot
        clear a NaN that got into the state; this host-side write can, and costs nothing per step.
        """

    def close(self) -> None:  # noqa: B027 - optional hook: backends without native resources skip it
        """Release native resources; the backend is unusable afterwards."""
