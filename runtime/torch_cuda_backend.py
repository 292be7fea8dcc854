"""PyTorch CUDA-graph backend: the bundle's reference step module on a GPU, replayed as two CUDA graphs.

A captured CUDA graph replays fixed kernels on fixed addresses, so every tensor the step touches is
allocated once, here:
- inputs: ONE pinned host byte buffer holds all contract inputs (the Backend's numpy `inputs` are typed
  views of it) and a device byte buffer has the same layout, so each tick is one non_blocking H2D copy
  instead of five;
- state: two sets, A and B. Direction 0 reads A and writes B, direction 1 the reverse (ping-pong, as
  in the ONNX Runtime and TensorRT backends). The step module returns fresh tensors, so its outputs are
  copied into the other set inside the graph with one multi-tensor copy; the input set is never
  written, which is the invariant the TensorRT backend relies on (no input/output aliasing);
- action: a static device tensor, copied into a pinned host tensor (the Backend's `action`); the
  stream is synchronized at the end of `run()`, so `action` is valid when it returns and the pinned
  input buffer is free to be rewritten.
Which tick warms up, captures or replays is `graph_capture.PingPongGraphs`, shared with TensorRT.

With device="cpu" and cuda_graphs=False the same buffers, copies and ping-pong run on the CPU (no
pinning, no streams, no capture): that is how this wiring is tested on machines without a GPU.
torch is imported inside the class only (board-side rule: runtime/ imports no torch at module level).
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np

from policyrt import contract
from policyrt.bundle import Bundle, BundleError

from .backend import Backend
from .graph_capture import PingPongGraphs

log = logging.getLogger(__name__)

_ALIGN = 16  # byte alignment of each input in the packed buffers: typed views need offset % itemsize == 0


def pack_layout(arrays: dict[str, np.ndarray]) -> tuple[dict[str, int], int]:
    """Byte offset of each array inside one packed buffer, and the buffer's size."""
    offsets, size = {}, 0
    for name, array in arrays.items():
        size = -(-size // _ALIGN) * _ALIGN
        offsets[name] = size
        size += array.nbytes
    return offsets, size


class TorchCudaBackend(Backend):
    name = "torch-cuda"

    def __init__(self, bundle: Bundle, batch_size: int, device: str = "cuda", cuda_graphs: bool = True):
        super().__init__(bundle, batch_size)
        try:
            import torch
        except ImportError as err:
            raise ImportError("backend 'torch-cuda' needs PyTorch built with CUDA: pip install torch") from err
        from policyrt.policies.checkpoint import load_checkpoint
        from policyrt.policies.kinds import make_step

        self._torch = torch
        self.device = torch.device(device)
        self._cuda = self.device.type == "cuda"
        if self.device.type not in ("cuda", "cpu"):
            raise ValueError(f"backend 'torch-cuda' runs on device 'cuda' (or 'cpu' for tests), not {device!r}")
        if self._cuda and not torch.cuda.is_available():
            raise RuntimeError(
                f"backend 'torch-cuda' needs a CUDA GPU, but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda})"
            )
        if self._cuda and self.device.index not in (None, torch.cuda.current_device()):
            # Capture and the stream would need a device guard on every tick; choosing the GPU by
            # CUDA_VISIBLE_DEVICES (or torch.cuda.set_device) first costs nothing per step.
            raise ValueError(f"device {device!r} is not the current CUDA device; select it with CUDA_VISIBLE_DEVICES")
        if cuda_graphs and not self._cuda:
            raise ValueError("cuda_graphs=True needs device='cuda'; on the CPU pass cuda_graphs=False")
        self.cuda_graphs = cuda_graphs
        if self._cuda and torch.get_float32_matmul_precision() != "highest":
            log.warning("float32 matmul precision is %r (TF32): the step will drift from the fp32 reference",
                        torch.get_float32_matmul_precision())

        reference = bundle.path / "reference"
        if not (reference / "config.json").is_file():
            raise BundleError(f"{reference}: this bundle carries no PyTorch reference checkpoint")
        policy, _ = load_checkpoint(reference)
        self.step_module = make_step(policy).to(self.device)
        self.specs = self.step_module.specs
        expected = [(s.name, tuple(s.shape)) for s in bundle.manifest.state]
        if [(s.name, tuple(s.shape)) for s in self.specs] != expected:
            raise BundleError(f"{reference}: the checkpoint's step state does not match the manifest's {expected}")
        # Our own stream: PyTorch requires warm-up and capture off the default stream, and keeping all
        # of this backend's work on one stream orders it without device-wide syncs.
        self._stream = torch.cuda.Stream(self.device) if self._cuda else None

        # Inputs: pinned host bytes <-> device bytes, same layout; typed views on both sides.
        offsets, size = pack_layout(self.inputs)
        self._host_bytes = torch.zeros(size, dtype=torch.uint8, pin_memory=self._cuda)
        self._device_bytes = torch.zeros(size, dtype=torch.uint8, device=self.device)
        host = self._host_bytes.numpy()
        device_inputs = {}
        for name, initial in list(self.inputs.items()):
            start, stop = offsets[name], offsets[name] + initial.nbytes
            view = host[start:stop].view(initial.dtype).reshape(initial.shape)
            view[...] = initial
            self.inputs[name] = view  # the Session writes here; run() ships it in one copy
            dtype = torch.from_numpy(initial[:0]).dtype
            device_inputs[name] = self._device_bytes[start:stop].view(dtype).view(initial.shape)
        self._device_inputs = tuple(device_inputs[name] for name in contract.INPUTS)  # the step's argument order

        initial_states = self.step_module.initial_states(batch_size)
        self._sets = [[t.to(self.device, copy=True) for t in initial_states] for _ in range(2)]
        self._action_device = torch.zeros(self.action.shape, dtype=torch.float32, device=self.device)
        self._action_host = torch.zeros(self.action.shape, dtype=torch.float32, pin_memory=self._cuda)
        self.action = self._action_host.numpy()
        # Outputs -> static buffers by one multi-tensor copy per dtype (one launch instead of one per
        # tensor: ~17 for the shipped xLSTM); a mixed-dtype list would fall back to a copy per tensor.
        self._copy_all = getattr(torch, "_foreach_copy_", None) or _copy_each
        dtypes = [self._action_device.dtype, *(t.dtype for t in self._sets[0])]
        self._copy_groups = [[i for i, dt in enumerate(dtypes) if dt == d] for d in dict.fromkeys(dtypes)]

        self.graphs = PingPongGraphs(self._enqueue, self._capture if cuda_graphs else None, self._replay)
        if self._cuda:  # the buffers above were filled on the default stream
            self._stream.wait_stream(torch.cuda.current_stream(self.device))

    # -- the three GPU actions PingPongGraphs drives ------------------------------------------------
    def _enqueue(self, direction: int) -> None:
        """Queue one step from state set `direction` into the other set (eagerly, or while capturing)."""
        src, dst = self._sets[direction], self._sets[direction ^ 1]
        with self._torch.no_grad():
            outputs = self.step_module(*self._device_inputs, *src)
            targets = [self._action_device, *dst]
            for group in self._copy_groups:
                self._copy_all([targets[i] for i in group], [outputs[i] for i in group])

    def _capture(self, direction: int):
        torch = self._torch
        graph = torch.cuda.CUDAGraph()
        # torch.cuda.graph synchronizes the device first, so this tick's input copy has landed.
        with torch.cuda.graph(graph, stream=self._stream):
            self._enqueue(direction)
        return graph

    @staticmethod
    def _replay(graph) -> None:
        graph.replay()

    # -- Backend --------------------------------------------------------------------------------
    def _on_stream(self):
        return self._torch.cuda.stream(self._stream) if self._cuda else contextlib.nullcontext()

    def run(self) -> None:
        with self._on_stream():
            self._device_bytes.copy_(self._host_bytes, non_blocking=True)
            self.graphs.step()
            self._action_host.copy_(self._action_device, non_blocking=True)
            if self._cuda:
                self._stream.synchronize()

    def reset_state(self, mask: np.ndarray) -> None:
        torch = self._torch
        current = self._sets[self.graphs.direction]
        with self._on_stream(), torch.no_grad():
            # A pageable copy (synchronous) and masked_fill_ (no nonzero(), so no hidden sync): only at
            # resets, never per step, and outside any graph.
            rows = torch.from_numpy(np.array(mask, dtype=bool)).to(self.device)
            for spec, tensor in zip(self.specs, current):
                tensor.masked_fill_(rows.view(-1, *[1] * (tensor.dim() - 1)), spec.init)

    def state(self) -> dict[str, np.ndarray]:
        if self._cuda:
            self._stream.synchronize()
        current = self._sets[self.graphs.direction]
        return {s.name: t.detach().cpu().numpy().copy() for s, t in zip(self.specs, current)}

    @property
    def captured(self) -> bool:
        """Both directions replay captured graphs (False on the CPU, without graphs, or after a fallback)."""
        return self.graphs is not None and self.graphs.captured

    def close(self) -> None:
        if self.graphs is None:
            return
        if self._cuda:
            self._stream.synchronize()
        for graph in self.graphs.graphs:
            if graph is not None:
                graph.reset()
        self.graphs = None
        self._sets = self._device_inputs = None
        self.step_module = None


def _copy_each(destinations, sources) -> None:
    for dst, src in zip(destinations, sources):
        dst.copy_(src)
