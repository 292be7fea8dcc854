"""ONNX Runtime backend: I/O binding over preallocated buffers and state ping-pong without copies.

Two IOBindings are built once: A->B binds state set A as inputs and set B as the `.next` outputs, and
B->A the reverse. Each tick runs one of them and flips, so the hot path neither allocates nor copies
state. Every OrtValue wraps a numpy array the backend owns, so writing host inputs is an in-place copy.
"""

from __future__ import annotations

import numpy as np

from policyrt import contract
from policyrt.bundle import Bundle, BundleError

from .backend import Backend, InferenceError, first_line


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, bundle: Bundle, batch_size: int, intra_op_threads: int = 1, optimization: str = "all"):
        super().__init__(bundle, batch_size)
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise ImportError("backend 'onnxruntime' needs the onnxruntime package: pip install 'policyrt[cpu]'") from err
        options = ort.SessionOptions()
        # Latency first: one intra-op thread avoids thread wake-ups that cost more than these tiny ops.
        options.intra_op_num_threads = intra_op_threads
        if intra_op_threads > 1:
            # Worker threads that spin after each run would take the core the robot (or a batched
            # sim server) needs between steps; let them sleep instead.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.inter_op_num_threads = 1
        # A failed run raises (InferenceError, one line); ONNX Runtime's own logger would also print
        # the same error to stderr in colour: only fatal messages from it.
        options.log_severity_level = 4
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        levels = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        options.graph_optimization_level = levels[optimization]
        self.session = _load_step_graph(ort, bundle, options)
        self._states = [contract.initial_state(bundle.manifest.state, batch_size) for _ in range(2)]
        wrap = ort.OrtValue.ortvalue_from_numpy
        self._keep_alive = []  # OrtValues must outlive the bindings that reference them

        def binding(src: dict, dst: dict):
            io = self.session.io_binding()
            for name, array in self.inputs.items():
                value = wrap(array)
                self._keep_alive.append(value)
                io.bind_ortvalue_input(name, value)
            for state in bundle.manifest.state:
                value_in, value_out = wrap(src[state.name]), wrap(dst[state.name])
                self._keep_alive += [value_in, value_out]
                io.bind_ortvalue_input(state.input_name, value_in)
                io.bind_ortvalue_output(state.output_name, value_out)
            value = wrap(self.action)
            self._keep_alive.append(value)
            io.bind_ortvalue_output(contract.ACTION, value)
            return io

        self._bindings = [binding(self._states[0], self._states[1]), binding(self._states[1], self._states[0])]
        self._current = 0  # index of the state set that holds the current state

    def run(self) -> None:
        try:
            self.session.run_with_iobinding(self._bindings[self._current])
        except Exception as exc:  # ONNX Runtime's own exception types (Fail, RuntimeException, ...)
            raise InferenceError(f"{self.name} step failed: {first_line(exc)}") from exc
        self._current ^= 1

    def reset_state(self, mask: np.ndarray) -> None:
        for spec in self.bundle.manifest.state:
            self._states[self._current][spec.name][mask] = spec.init

    def state(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self._states[self._current].items()}

    def close(self) -> None:
        self._bindings = []
        self._keep_alive = []
        self.session = None


# ONNX Runtime's type strings for the dtypes a step graph may use, as numpy names (contract.check_graph_io).
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(bool)": "bool", "tensor(int32)": "int32", "tensor(int64)": "int64",
               "tensor(float16)": "float16", "tensor(double)": "float64"}


def _load_step_graph(ort, bundle: Bundle, options):
    """The InferenceSession of the bundle's step graph, its inputs and outputs checked against the manifest.
    Anything ONNX Runtime refuses (a corrupt file, external data outside the bundle, an unknown dtype or
    operator) is one BundleError naming the file."""
    try:
        session = ort.InferenceSession(str(bundle.onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime's exception types (InvalidProtobuf, Fail, ...) share no base of their own
        raise BundleError(f"{bundle.onnx_path}: ONNX Runtime cannot load the step graph: {first_line(exc)}") from exc

    def io(tensors) -> dict:
        return {t.name: (tuple(d if isinstance(d, int) else None for d in t.shape), _ORT_DTYPES.get(t.type, t.type))
                for t in tensors}

    try:
        contract.check_graph_io(bundle.manifest, io(session.get_inputs()), io(session.get_outputs()))
    except ValueError as exc:
        raise BundleError(f"{bundle.onnx_path}: {exc}") from None
    return session
