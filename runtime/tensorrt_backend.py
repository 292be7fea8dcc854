"""TensorRT backend: the bundle's engine for this GPU, state resident on the device, two CUDA graphs.

Per tick: the Session has written the inputs into pinned host memory (`self.inputs` are views of it); one
async copy moves the inputs region to the device, the engine runs, one async copy brings the action back,
the stream is synchronized. State never leaves the device. Each state tensor has two device buffers;
direction 0 binds set A to `state.<name>` and set B to `state.<name>.next`, direction 1 the reverse.
TensorRT does not support an input aliasing an output (NVIDIA/TensorRT issue 4681), hence two sets and
an address swap with `set_tensor_address` instead of a copy.

CUDA graphs bake buffer addresses, so each direction gets its own graph (copies + engine), captured on a
non-default stream after one eager warm-up enqueue (TensorRT sets up lazily on the first
`execute_async_v3`; NVIDIA's demo/Diffusion Engine.infer runs it once before capturing, and capture on the
legacy default stream is not allowed: docs.nvidia.com/dl-cuda-graph, "Constraints"). The warm-up /
capture / replay / fallback state machine is runtime/graph_capture.py's PingPongGraphs, shared with the
torch-cuda backend; this module only supplies the three CUDA calls.

Memory and streams go through cuda-python (`cuda.bindings.runtime`), as TensorRT's own samples do since
10.x (samples/python/common_runtime.py). The engine must carry a verify stamp for this GPU and TensorRT
(runtime/trt_engines.py) unless `require_verified=False` — which `policyrt verify` itself uses.
"""

from __future__ import annotations

import ctypes

import numpy as np

from policyrt.bundle import Bundle

from .backend import Backend
from .graph_capture import PingPongGraphs
from .trt_buffers import EngineTensor, host_views, init_rows, plan_buffers, reset_copies
from .trt_engines import (
    check_stamp,
    cuda_versions,
    current_gpu_name,
    find_engine,
    import_cudart,
    import_tensorrt,
)


class CudaError(RuntimeError):
    pass


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, bundle: Bundle, batch_size: int, precision: str | None = None, require_verified: bool = True,
                 cuda_graphs: bool = True, device: int = 0):
        super().__init__(bundle, batch_size)
        defaults = {k: v.copy() for k, v in self.inputs.items()}
        trt, self._rt = import_tensorrt(), import_cudart()
        self._cuda_error_seen = False
        self._stream, self._device, self._host, self._init, self.graphs = None, 0, 0, 0, None  # for close()
        self._check(self._rt.cudaSetDevice(device))
        self.tensorrt_version = trt.__version__
        self.gpu_name = current_gpu_name(device)
        self.engine_path = find_engine(bundle.path, self.gpu_name, self.tensorrt_version, precision)
        self.precision = self.engine_path.stem.rsplit("-", 1)[1]
        self.stamp = check_stamp(self.engine_path, self.gpu_name, self.tensorrt_version) if require_verified else None

        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{self.engine_path}: TensorRT {self.tensorrt_version} could not deserialize it "
                               "(built by another TensorRT version?); rebuild with policyrt build-engine")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        tensors = [EngineTensor(n, self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT,
                                self.engine.get_tensor_dtype(n).name, tuple(self.engine.get_tensor_shape(n)))
                   for n in names]
        self.plan = plan_buffers(bundle.manifest, batch_size, tensors)  # refuses an engine off the contract
        self._check_profile([t.name for t in tensors if t.is_input], batch_size)
        self.context = self.engine.create_execution_context()
        for slot in self.plan.inputs:
            self._set_input_shape(slot.engine_name, slot.shape)
        for pair in self.plan.states:
            self._set_input_shape(pair.input_name, pair.sets[0].shape)

        rt = self._rt
        self._stream = self._check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
        self._device = int(self._check(rt.cudaMalloc(self.plan.device_nbytes)))  # 256-byte aligned by CUDA
        self._host = int(self._check(rt.cudaHostAlloc(self.plan.host_nbytes, rt.cudaHostAllocDefault)))
        block = np.frombuffer((ctypes.c_uint8 * self.plan.host_nbytes).from_address(self._host), np.uint8)
        self.inputs, self.action = host_views(block, self.plan)
        for name, value in defaults.items():
            np.copyto(self.inputs[name], value)
        self._init_offsets, init_size, fills = init_rows(self.plan)
        self._init = int(self._check(rt.cudaHostAlloc(init_size, rt.cudaHostAllocDefault))) if init_size else 0
        if init_size:
            init_block = np.frombuffer((ctypes.c_uint8 * init_size).from_address(self._init), np.uint8)
            for offset, dtype, count, value in fills:
                init_block[offset:offset + count * dtype.itemsize] = np.full(count, value, dtype).view(np.uint8)

        self._addresses = [[(name, self._device + off) for name, off in self.plan.bindings(d).items()] for d in (0, 1)]
        self._h2d, self._d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.graphs = PingPongGraphs(self._enqueue, self._capture if cuda_graphs else None, self._replay)
        # On the backend's stream, not cudaMemset's legacy stream 0: the init rows below are copied on this
        # non-blocking stream, which does not wait for stream 0, so a stream-0 memset could land after them.
        self._check(rt.cudaMemsetAsync(self._device, 0, self.plan.device_nbytes, self._stream))
        self.reset_state(np.ones(batch_size, bool))  # no uninitialized bytes: 0 * NaN would survive a reset

    # -- the three calls PingPongGraphs drives -------------------------------------------------------------
    def _enqueue(self, direction: int) -> None:
        rt, stream = self._rt, self._stream
        for name, address in self._addresses[direction]:
            if not self.context.set_tensor_address(name, address):
                raise RuntimeError(f"TensorRT set_tensor_address({name!r}) failed for {self.engine_path.name} "
                                   "(see the TensorRT log above)")
        self._check(rt.cudaMemcpyAsync(self._device, self._host, self.plan.inputs_nbytes, self._h2d, stream))
        if not self.context.execute_async_v3(int(stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
        a = self.plan.action
        self._check(rt.cudaMemcpyAsync(self._host + a.offset, self._device + a.offset, a.nbytes, self._d2h, stream))

    def _capture(self, direction: int):
        rt = self._rt
        self._check(rt.cudaStreamBeginCapture(self._stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal))
        try:
            self._enqueue(direction)
        except BaseException:
            # Leave capture mode and free what was recorded, unchecked: a failed enqueue may have invalidated
            # the capture, and its own error, not EndCapture's, is the reason the fallback reports.
            err, graph = rt.cudaStreamEndCapture(self._stream)
            if int(getattr(err, "value", err)) == 0 and graph is not None and int(graph):
                rt.cudaGraphDestroy(graph)
            raise
        graph = self._check(rt.cudaStreamEndCapture(self._stream))
        try:
            return self._check(rt.cudaGraphInstantiate(graph, 0))
        finally:
            self._check(rt.cudaGraphDestroy(graph))

    def _replay(self, graph_exec) -> None:
        self._check(self._rt.cudaGraphLaunch(graph_exec, self._stream))

    # -- Backend -------------------------------------------------------------------------------------------
    def run(self) -> None:
        self.graphs.step()
        self._check(self._rt.cudaStreamSynchronize(self._stream))

    def reset_state(self, mask: np.ndarray) -> None:
        rt, stream, base = self._rt, self._stream, self._device
        for c in reset_copies(self.plan, mask, self.graphs.direction):
            if c.kind == "zero":
                self._check(rt.cudaMemsetAsync(base + c.dst, 0, c.nbytes, stream))
            elif c.kind == "h2d":
                self._check(rt.cudaMemcpyAsync(base + c.dst, self._init + c.src, c.nbytes, self._h2d, stream))
            else:
                kind = rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
                self._check(rt.cudaMemcpyAsync(base + c.dst, base + c.src, c.nbytes, kind, stream))
        self._check(rt.cudaStreamSynchronize(stream))

    def state(self) -> dict[str, np.ndarray]:
        current = self.graphs.direction  # the set the last tick wrote (PingPongGraphs flips after each step)
        out = {}
        for pair in self.plan.states:
            slot = pair.sets[current]
            array = np.empty(slot.shape, slot.dtype)
            self._check(self._rt.cudaMemcpy(array.ctypes.data, self._device + slot.offset, slot.nbytes, self._d2h))
            out[pair.name] = array
        return out

    def close(self) -> None:
        """Free everything allocated so far (also after a constructor that failed half-way); idempotent."""
        rt = getattr(self, "_rt", None)
        if rt is None or getattr(self, "_stream", None) is None and not getattr(self, "_device", 0):
            return
        if self._stream is not None:
            rt.cudaStreamSynchronize(self._stream)
        if self.graphs is not None:
            for graph_exec in self.graphs.graphs:
                if graph_exec is not None:
                    rt.cudaGraphExecDestroy(graph_exec)
            self.graphs.invalidate()
        self.context = self.engine = None
        for pointer, free in ((self._device, rt.cudaFree), (self._host, rt.cudaFreeHost), (self._init, rt.cudaFreeHost)):
            if pointer:
                free(pointer)
        if self._stream is not None:
            rt.cudaStreamDestroy(self._stream)
        self._stream, self._device, self._host, self._init = None, 0, 0, 0
        self.inputs, self.action = {}, np.zeros(0, np.float32)  # the views pointed into freed memory

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: cuda-python may already be gone
            pass

    # -- helpers -------------------------------------------------------------------------------------------
    def _check_profile(self, input_names: list[str], batch_size: int) -> None:
        lo, _, hi = self.engine.get_tensor_profile_shape(input_names[0], 0)
        if not lo[0] <= batch_size <= hi[0]:
            raise ValueError(f"{self.engine_path.name} serves batches {lo[0]}..{hi[0]}, this session wants "
                             f"{batch_size}: rebuild with policyrt build-engine --max-batch {batch_size}")

    def _set_input_shape(self, name: str, shape: tuple) -> None:
        if not self.context.set_input_shape(name, shape):
            raise RuntimeError(f"TensorRT set_input_shape({name!r}, {shape}) failed for {self.engine_path.name}: "
                               "outside the engine's profile? (see the TensorRT log above)")

    def _check(self, result):
        """cuda-python returns (error, *values): raise on error, return the value(s).

        The backend's first CUDA error also names the cuda-python and CUDA versions: a cuda-python built
        for a newer CUDA major than the board's driver fails every call (cudaErrorInsufficientDriver)."""
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(getattr(err, "value", err)) != 0:
            name = self._rt.cudaGetErrorName(err)[1]
            text = f"CUDA error {int(getattr(err, 'value', err))} ({name.decode() if isinstance(name, bytes) else name})"
            if not self._cuda_error_seen:
                self._cuda_error_seen = True
                text += f"; {cuda_versions(self._rt)}"
            raise CudaError(text)
        return values[0] if len(values) == 1 else (tuple(values) or None)
