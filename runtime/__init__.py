"""Runtime: open a bundle and step it on a backend.

BACKENDS is the one registry of backends: `make_backend`, the CLI's `--backend` choices and the
controller config's check all read it, and adding a backend is one module plus one line here. Each
backend's module (and its library: onnxruntime, torch, tensorrt) is imported when the backend is first
made. The package itself imports neither numpy nor torch, because the CLI reads the registry while it
builds its parsers; `Session` and the bundle names below load on first use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class BackendEntry:
    module: str  # under policyrt.runtime
    cls: str  # a policyrt.runtime.backend.Backend subclass in that module
    aliases: tuple[str, ...]  # other spellings --backend accepts
    summary: str


AUTO = "auto"
AUTO_BACKEND = "onnxruntime"  # what auto picks: it runs on every board, with no GPU and no engine build
BACKENDS = {
    "onnxruntime": BackendEntry("onnxruntime_backend", "OnnxRuntimeBackend", ("ort", "cpu"), "ONNX Runtime on the CPU"),
    "torch": BackendEntry("torch_backend", "TorchBackend", ("pytorch", "reference"),
                          "the PyTorch reference checkpoint parity.json was recorded with"),
    # Needs an engine built on this board and its verify stamp (docs/BOARD.md).
    "tensorrt": BackendEntry("tensorrt_backend", "TensorRTBackend", ("trt",), "this board's TensorRT engine"),
    "torch-cuda": BackendEntry("torch_cuda_backend", "TorchCudaBackend", ("torch_cuda",),
                               "the PyTorch reference on a CUDA GPU, replayed as CUDA graphs"),
    "iree": BackendEntry("iree_backend", "IreeBackend", (), "this CPU's IREE-compiled step (build-engine --backend iree)"),
}
ALIASES = {alias: name for name, entry in BACKENDS.items() for alias in entry.aliases}  # alias -> registered name


def backend_names(aliases: bool = False) -> tuple[str, ...]:
    """What `--backend` accepts: auto, then every registered backend; with `aliases`, their other spellings too."""
    return (AUTO, *BACKENDS, *(ALIASES if aliases else ()))


def resolve_backend(name: str) -> str:
    """The registered backend `name` means (an alias, or auto); ValueError naming the choices if none."""
    name = ALIASES.get(name, name)
    if name == AUTO:
        return AUTO_BACKEND
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; available: {', '.join(backend_names())}")
    return name


def backend_class(name: str) -> type:
    """The Backend subclass registered as `name` (or an alias, or auto), its module imported now."""
    entry = BACKENDS[resolve_backend(name)]
    return getattr(importlib.import_module(f"{__name__}.{entry.module}"), entry.cls)


def make_backend(bundle, name: str, batch_size: int, **options):
    """A backend of `batch_size` slots for `bundle`; `options` go to its constructor. `auto` without
    options (they would be ONNX Runtime's) takes a verified IREE artifact for a recurrent bundle."""
    if ALIASES.get(name, name) == AUTO and not options:
        from .iree_artifacts import auto_choice

        name = auto_choice(bundle, batch_size, AUTO_BACKEND)
    return backend_class(name)(bundle, batch_size, **options)


def load(path, backend: str = AUTO, batch_size: int = 1, trust=None, **options):
    """Open the bundle at `path` (fields, digest and checksums verified) and return a Session with `batch_size` slots.

    trust: a trust directory; the bundle must carry a signature by one of its keys
    (policyrt.signing.check_trusted, raising UntrustedBundle) before a backend is made.
    `options` go to the backend, e.g. `precision="fp16"` for tensorrt. A tensorrt engine without a verify
    stamp for this board is refused unless `require_verified=False` is passed explicitly."""
    from policyrt.bundle import open_bundle

    from .session import Session

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    bundle = open_bundle(path)
    try:
        if trust is not None:
            from policyrt.signing import check_trusted

            check_trusted(bundle, trust, where=path)
        return Session(bundle, make_backend(bundle, backend, batch_size, **options))
    except BaseException:
        bundle.close()  # a .tar's unpacked copy goes with the refusal
        raise


_ON_FIRST_USE = {"Session": ".session", "Bundle": "policyrt.bundle", "BundleError": "policyrt.bundle",
                 "open_bundle": "policyrt.bundle"}


def __getattr__(name: str):
    """`policyrt.runtime.Session` and the bundle names, imported on first use (they need numpy)."""
    if name in _ON_FIRST_USE:
        return getattr(importlib.import_module(_ON_FIRST_USE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ALIASES", "BACKENDS", "Bundle", "BundleError", "Session", "backend_class", "backend_names", "load",
           "make_backend", "open_bundle", "resolve_backend"]
