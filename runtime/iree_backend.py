"""IREE backend: the bundle's step compiled for this CPU (policyrt build-engine --backend iree), run in-process.

The artifact is a fixed-batch build of the step graph rewritten so that one call takes the float host
inputs packed into `host` [B, obs + act + 2], `reset` [B], the recurrent state as one carry per dtype
and the action buffer, and returns the carries (runtime/iree_build.py). The Session's `inputs` are views
into the 64-byte aligned `host` array and `action` is an aligned array the step writes in place, all
imported into the runtime once (no copy per call; an unaligned import crashes IREE's kernels). The carry
a call returns is the device buffer passed straight back next call: no state copy per step.
`state()` and `reset_state()` unpack or rewrite the carry, off the hot path.

The local-sync driver runs the dispatches on the calling thread: no worker wake-ups (issue 17 measured
5-10 ms p99 outliers with local-task), which is what a one-core real-time loop wants.
"""

from __future__ import annotations

import numpy as np

from policyrt import contract
from policyrt.bundle import Bundle

from .backend import Backend, InferenceError, first_line
from .iree_artifacts import (
    FUNCTION,
    INSTALL_HINT,
    ArtifactError,
    aligned_empty,
    carry_layout,
    find_artifact,
    host_columns,
    this_cpu,
    verify_command,
)
from .stamps import StampError, check_stamp

DRIVER = "local-sync"


def import_runtime():
    try:
        import iree.runtime as ireert
    except ImportError as err:
        raise ImportError(f"backend 'iree' needs the IREE runtime (iree-base-runtime): {INSTALL_HINT}") from err
    return ireert


class IreeBackend(Backend):
    name = "iree"

    def __init__(self, bundle: Bundle, batch_size: int, require_verified: bool = True):
        super().__init__(bundle, batch_size)
        rt = import_runtime()
        self.cpu = this_cpu()
        self.artifact_path, self.record = find_artifact(bundle, batch_size, self.cpu)
        self.stamp = None
        if require_verified:
            try:
                self.stamp = check_stamp(self.artifact_path, {"cpu": self.cpu, "batch": batch_size},
                                         verify_command(bundle.path, batch_size))
            except StampError as err:
                raise ArtifactError(str(err)) from err
        m = bundle.manifest
        self._rt = rt
        self._carries = carry_layout(m)
        self._element = {"float32": rt.HalElementType.FLOAT_32, "int32": rt.HalElementType.SINT_32}

        columns = host_columns(m)
        self._host = aligned_empty((batch_size, columns[contract.TARGET_RETURN][1]), np.float32)
        self._reset = aligned_empty((batch_size,), np.bool_)
        views = {name: self._host[:, a:b] if b - a > 1 or name in (contract.OBS, contract.PREV_ACTION)
                 else self._host[:, a] for name, (a, b) in columns.items()}
        views[contract.RESET] = self._reset
        for name, view in views.items():
            view[...] = self.inputs[name]  # the contract's defaults: every slot resetting, target_return set
        self.inputs = views

        self._instance = rt.VmInstance()
        self._device = rt.get_driver(DRIVER).create_default_device()
        self._module = rt.VmModule.mmap(self._instance, str(self.artifact_path))
        self._context = rt.VmContext(self._instance, [rt.create_hal_module(self._instance, self._device), self._module])
        self._function = self._module.lookup_function(FUNCTION)
        if self._function is None:
            raise ArtifactError(f"{self.artifact_path}: no `{FUNCTION}` function in it; rebuild it: "
                                f"policyrt build-engine {bundle.path} --backend iree --batch {batch_size}")
        allocator = self._device.allocator
        memory = rt.MemoryType.DEVICE_LOCAL | rt.MemoryType.HOST_VISIBLE
        usage = rt.BufferUsage.DEFAULT | rt.BufferUsage.MAPPING
        self._host_views = [
            rt.HalBufferView(allocator.import_host_allocation(self._host, memory, usage), list(self._host.shape),
                             rt.HalElementType.FLOAT_32),
            rt.HalBufferView(allocator.import_host_allocation(self._reset, memory, usage), [batch_size],
                             rt.HalElementType.BOOL_8),
        ]
        self.action = aligned_empty(self.action.shape, np.float32)  # the step writes it in place
        self.action[...] = 0.0
        self._host_views.append(rt.HalBufferView(allocator.import_host_allocation(self.action, memory, usage),
                                                 list(self.action.shape), rt.HalElementType.FLOAT_32))
        self._memory, self._usage = memory, usage
        initial = [self._pack(carry, contract.initial_state(m.state, batch_size)) for carry in self._carries]
        self._state = [self._upload(carry, rows) for carry, rows in zip(self._carries, initial)]

    def _pack(self, carry, states: dict[str, np.ndarray]) -> np.ndarray:
        rows = np.zeros((self.batch_size, carry.width), carry.dtype)
        for piece in carry.slices:
            rows[:, piece.start:piece.stop] = states[piece.state.name].reshape(self.batch_size, -1)
        return rows

    def _upload(self, carry, rows: np.ndarray):
        return self._device.allocator.allocate_buffer_copy(
            memory_type=self._memory, allowed_usage=self._usage, device=self._device, buffer=rows,
            element_type=self._element[carry.dtype])

    def _download(self, carry, view) -> np.ndarray:
        return view.map().asarray([self.batch_size, carry.width], np.dtype(carry.dtype)).copy()

    def run(self) -> None:
        rt, host, reset, action = self._rt, *self._host_views
        args = rt.VmVariantList(3 + len(self._state))
        args.push_ref(host)
        args.push_ref(reset)
        for view in self._state:
            args.push_ref(view)
        args.push_ref(action)  # written in place: self.action holds the result when invoke returns
        results = rt.VmVariantList(len(self._state))
        try:
            self._context.invoke(self._function, args, results)
        except (RuntimeError, ValueError) as exc:  # the runtime's status errors (ValueError: INVALID_ARGUMENT)
            raise InferenceError(f"{self.name} step failed: {first_line(exc)}") from exc
        self._state = [results.get_as_object(i, rt.HalBufferView) for i in range(len(self._state))]

    def state(self) -> dict[str, np.ndarray]:
        out = {}
        for carry, view in zip(self._carries, self._state):
            rows = self._download(carry, view)
            for piece in carry.slices:
                out[piece.state.name] = rows[:, piece.start:piece.stop].reshape(self.batch_size, *piece.state.shape).copy()
        return out

    def reset_state(self, mask: np.ndarray) -> None:
        mask = np.asarray(mask, bool)
        if not mask.any():
            return
        for index, carry in enumerate(self._carries):
            rows = self._download(carry, self._state[index])
            for piece in carry.slices:
                rows[mask, piece.start:piece.stop] = piece.state.init
            self._state[index] = self._upload(carry, rows)

    def close(self) -> None:
        self._state, self._host_views = [], []
        self._function = self._context = self._module = self._device = self._instance = None
