"""Runtime: open a bundle and step it on a backend. Imports no torch (backends load theirs lazily)."""

from __future__ import annotations

from policyrt.bundle import Bundle, BundleError, open_bundle

from .session import Session

BACKENDS = ("onnxruntime", "torch", "tensorrt", "torch-cuda")
ALIASES = {"ort": "onnxruntime", "cpu": "onnxruntime", "pytorch": "torch", "reference": "torch", "trt": "tensorrt",
           "torch_cuda": "torch-cuda"}


def make_backend(bundle: Bundle, name: str, batch_size: int, **options):
    name = ALIASES.get(name, name)
    if name == "auto":
        name = "onnxruntime"
    if name == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(bundle, batch_size, **options)
    if name == "torch":
        from .torch_backend import TorchBackend

        return TorchBackend(bundle, batch_size, **options)
    if name == "tensorrt":  # needs an engine built on this board and its verify stamp (docs/BOARD.md)
        from .tensorrt_backend import TensorRTBackend

        return TensorRTBackend(bundle, batch_size, **options)
    if name == "torch-cuda":
        from .torch_cuda_backend import TorchCudaBackend

        return TorchCudaBackend(bundle, batch_size, **options)
    raise ValueError(f"unknown backend {name!r}; available: auto, {', '.join(BACKENDS)}")


def load(path, backend: str = "auto", batch_size: int = 1, **options) -> Session:
    """Open the bundle at `path` (checksums verified) and return a Session with `batch_size` slots.

    `options` go to the backend, e.g. `precision="fp16"` for tensorrt. A tensorrt engine without a verify
    stamp for this board is refused unless `require_verified=False` is passed explicitly."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    bundle = open_bundle(path)
    return Session(bundle, make_backend(bundle, backend, batch_size, **options))


__all__ = ["Bundle", "BundleError", "Session", "load", "make_backend", "open_bundle", "BACKENDS"]
