"""An emulated cuda-python runtime and TensorRT, so runtime/tensorrt_backend.py runs unmodified on a CPU.

What it keeps of CUDA is what the backend's correctness depends on:
- memory is host memory at real addresses (ctypes), so pointer arithmetic and copies are real;
- a non-blocking stream does NOT wait for the legacy default stream: work on stream 0 is held back until
  something synchronizes with stream 0 (a synchronous cudaMemcpy, cudaStreamSynchronize(0),
  cudaDeviceSynchronize), while work on a non-blocking stream runs at once. That is the worst order a
  GPU may choose, and the one that exposes a missing dependency between the two;
- stream capture records the stream's work into a graph instead of running it; launching replays it
  with the addresses that were bound at capture;
- calls return (error, *values) like cuda-python; `fail` makes a named call return an error code.
The engine is the bundle's ONNX graph run by ONNX Runtime (the engine file holds policy.onnx's bytes);
`refuse` names tensors whose set_input_shape / set_tensor_address return False, `fail_execute` says
when execute_async_v3 returns False ("capture", "always") and `invalidate` whether that failure also
invalidates the capture (as a forbidden call inside capture does).
"""

from __future__ import annotations

import ctypes
import types
from dataclasses import dataclass

import numpy as np

INSUFFICIENT_DRIVER = 35  # cudaErrorInsufficientDriver
CAPTURE_INVALIDATED = 901  # cudaErrorStreamCaptureInvalidated
ERROR_NAMES = {INSUFFICIENT_DRIVER: "cudaErrorInsufficientDriver", CAPTURE_INVALIDATED: "cudaErrorStreamCaptureInvalidated"}
LEGACY_STREAM = 0


@dataclass
class DeviceProperties:
    name: bytes


class FakeCudart:
    cudaStreamNonBlocking = 1
    cudaHostAllocDefault = 0
    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2,
                                           cudaMemcpyDeviceToDevice=3)
    cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeGlobal=0)

    def __init__(self, gpu: str, runtime_version: int = 12060, driver_version: int = 12060):
        self.gpu, self.runtime_version, self.driver_version = gpu, runtime_version, driver_version
        self.fail: dict[str, int] = {}  # call name -> error code it returns (and does nothing)
        self.memory: dict[int, ctypes.Array] = {}  # address -> the buffer that keeps it alive
        self.legacy: list = []  # work held back on the legacy default stream
        self.capturing: dict[int, list] = {}  # stream -> work recorded while capturing
        self.invalidated: set[int] = set()
        self.graphs: dict[int, list] = {}  # live cudaGraph_t -> its work
        self.execs: dict[int, list] = {}  # live cudaGraphExec_t
        self.streams: set[int] = set()
        self._next_handle = 100

    # -- helpers -------------------------------------------------------------------------------------------
    def _handle(self) -> int:
        self._next_handle += 1
        return self._next_handle

    def _failed(self, call: str) -> int:
        return self.fail.get(call, 0)

    def submit(self, stream: int, work) -> None:
        stream = int(stream)
        if stream in self.capturing:
            self.capturing[stream].append(work)
        elif stream == LEGACY_STREAM:
            self.legacy.append(work)
        else:
            work()

    def _sync_legacy(self) -> None:
        while self.legacy:
            self.legacy.pop(0)()

    def _alloc(self, call: str, nbytes: int):
        if err := self._failed(call):
            return (err, 0)
        buffer = (ctypes.c_uint8 * (nbytes + 256))()
        address = (ctypes.addressof(buffer) + 255) // 256 * 256
        self.memory[address] = buffer
        return (0, address)

    # -- the cuda-python calls the backend makes -----------------------------------------------------------
    def cudaSetDevice(self, device):
        return (self._failed("cudaSetDevice"),)

    def cudaGetDeviceProperties(self, device):
        return (0, DeviceProperties(self.gpu.encode()))

    def cudaGetErrorName(self, err):
        return (0, ERROR_NAMES.get(int(err), f"cudaError{int(err)}").encode())

    def cudaRuntimeGetVersion(self):
        return (0, self.runtime_version)

    def cudaDriverGetVersion(self):
        return (0, self.driver_version)

    def cudaStreamCreateWithFlags(self, flags):
        if err := self._failed("cudaStreamCreateWithFlags"):
            return (err, None)
        stream = self._handle()
        self.streams.add(stream)
        return (0, stream)

    def cudaStreamDestroy(self, stream):
        self.streams.discard(int(stream))
        return (0,)

    def cudaMalloc(self, nbytes):
        return self._alloc("cudaMalloc", nbytes)

    def cudaHostAlloc(self, nbytes, flags):
        return self._alloc("cudaHostAlloc", nbytes)

    def cudaFree(self, address):
        self.memory.pop(int(address), None)
        return (0,)

    cudaFreeHost = cudaFree

    def cudaMemset(self, address, value, nbytes):
        """Legacy default stream: asynchronous to the host, ordered only with stream 0's work."""
        self.submit(LEGACY_STREAM, lambda: ctypes.memset(address, value, nbytes))
        return (self._failed("cudaMemset"),)

    def cudaMemsetAsync(self, address, value, nbytes, stream):
        self.submit(stream, lambda: ctypes.memset(address, value, nbytes))
        return (self._failed("cudaMemsetAsync"),)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        self.submit(stream, lambda: ctypes.memmove(dst, src, nbytes))
        return (self._failed("cudaMemcpyAsync"),)

    def cudaMemcpy(self, dst, src, nbytes, kind):
        self._sync_legacy()  # synchronous, on the legacy stream: after everything queued there
        ctypes.memmove(dst, src, nbytes)
        return (0,)

    def cudaStreamSynchronize(self, stream):
        if int(stream) == LEGACY_STREAM:
            self._sync_legacy()
        return (self._failed("cudaStreamSynchronize"),)

    def cudaDeviceSynchronize(self):
        self._sync_legacy()
        return (0,)

    def cudaStreamBeginCapture(self, stream, mode):
        self.capturing[int(stream)] = []
        return (0,)

    def cudaStreamEndCapture(self, stream):
        work = self.capturing.pop(int(stream))
        if int(stream) in self.invalidated:
            self.invalidated.discard(int(stream))
            return (CAPTURE_INVALIDATED, None)
        graph = self._handle()
        self.graphs[graph] = work
        return (0, graph)

    def cudaGraphInstantiate(self, graph, flags):
        graph_exec = self._handle()
        self.execs[graph_exec] = list(self.graphs[int(graph)])
        return (0, graph_exec)

    def cudaGraphDestroy(self, graph):
        self.graphs.pop(int(graph), None)
        return (0,)

    def cudaGraphExecDestroy(self, graph_exec):
        self.execs.pop(int(graph_exec), None)
        return (0,)

    def cudaGraphLaunch(self, graph_exec, stream):
        for work in self.execs[int(graph_exec)]:
            self.submit(stream, work)
        return (0,)


def host_array(address: int, dtype, shape) -> np.ndarray:
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    raw = (ctypes.c_uint8 * (count * dtype.itemsize)).from_address(address)
    return np.frombuffer(raw, dtype).reshape(shape)


ORT_TO_TRT = {"tensor(float)": "FLOAT", "tensor(int32)": "INT32", "tensor(bool)": "BOOL"}
TRT_TO_NUMPY = {"FLOAT": np.float32, "INT32": np.int32, "BOOL": np.bool_}


class FakeEngine:
    def __init__(self, trt, onnx_bytes: bytes):
        import onnxruntime as ort

        self.trt = trt
        self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        self.io = {}  # name -> (is_input, TensorRT dtype name, shape with -1 for the batch)
        for is_input, args in ((True, self.session.get_inputs()), (False, self.session.get_outputs())):
            for arg in args:
                shape = tuple(d if isinstance(d, int) else -1 for d in arg.shape)
                self.io[arg.name] = (is_input, ORT_TO_TRT[arg.type], shape)
        self.names = list(self.io)

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return self.trt.TensorIOMode.INPUT if self.io[name][0] else self.trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return types.SimpleNamespace(name=self.io[name][1])

    def get_tensor_shape(self, name):
        return self.io[name][2]

    def get_tensor_profile_shape(self, name, profile):
        shape = self.io[name][2]
        return tuple(tuple(b if d == -1 else d for d in shape) for b in (1, 1, self.trt.max_batch))

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine):
        self.engine, self.trt = engine, engine.trt
        self.shapes, self.addresses = {}, {}

    def set_input_shape(self, name, shape):
        if name in self.trt.refuse:
            return False
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name, address):
        if name in self.trt.refuse:
            return False
        self.addresses[name] = int(address)
        return True

    def execute_async_v3(self, stream):
        cudart, stream = self.trt.cudart, int(stream)
        capturing = stream in cudart.capturing
        if self.trt.fail_execute == "always" or (self.trt.fail_execute == "capture" and capturing):
            if capturing and self.trt.invalidate:
                cudart.invalidated.add(stream)
            return False
        addresses, shapes = dict(self.addresses), dict(self.shapes)  # what a captured graph bakes in
        batch = next(iter(shapes.values()))[0]

        def run():
            io = self.engine.io
            feeds = {n: host_array(addresses[n], TRT_TO_NUMPY[io[n][1]], shapes[n]).copy()
                     for n, (is_input, _, _) in io.items() if is_input}
            outputs = self.engine.session.run(None, feeds)
            for arg, value in zip(self.engine.session.get_outputs(), outputs):
                dtype = TRT_TO_NUMPY[io[arg.name][1]]
                shape = (batch, *io[arg.name][2][1:])
                np.copyto(host_array(addresses[arg.name], dtype, shape), value.astype(dtype))

        cudart.submit(stream, run)
        return True


class FakeTensorRT:
    """Stands in for the `tensorrt` module: Logger, Runtime, TensorIOMode, __version__."""

    Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")

    def __init__(self, cudart: FakeCudart, version: str, max_batch: int = 64):
        self.cudart, self.__version__, self.max_batch = cudart, version, max_batch
        self.refuse: set[str] = set()
        self.fail_execute: str | None = None
        self.invalidate = False

    def Runtime(self, logger):  # noqa: N802 - TensorRT's name
        return types.SimpleNamespace(deserialize_cuda_engine=lambda data: FakeEngine(self, data))


def install(monkeypatch, gpu: str, trt_version: str, cuda_python: str = "12.6.2", **versions):
    """Put the fakes where `import tensorrt` and `from cuda.bindings import runtime` find them."""
    import sys

    cudart = FakeCudart(gpu, **versions)
    trt = FakeTensorRT(cudart, trt_version)
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime, bindings.__version__ = cudart, cuda_python
    cuda = types.ModuleType("cuda")
    cuda.bindings = bindings
    for name, module in (("tensorrt", trt), ("cuda", cuda), ("cuda.bindings", bindings),
                         ("cuda.bindings.runtime", cudart)):
        monkeypatch.setitem(sys.modules, name, module)
    return cudart, trt
