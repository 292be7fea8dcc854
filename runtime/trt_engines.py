"""TensorRT engines inside a bundle: file names, lookup, and the verify stamps that gate loading them.

An engine is only valid for the GPU, the TensorRT version and the precision it was built with, so a
bundle may carry several under `engines/`, named `<gpu>-trt<version>-<precision>.plan`. `engines/` is
excluded from the bundle checksums (policyrt/bundle.py, UNCHECKED_DIRS): engines are built on the board
after the bundle was made. Their integrity is what the stamps are for: `policyrt verify --backend
tensorrt` replays parity.json on the engine and, on a pass, writes `engines/<engine>.verified.json`
keyed by the engine's sha256. The TensorRT backend refuses an engine without a matching stamp, so an
engine that was rebuilt, copied from another board or corrupted cannot move a robot unverified.

Pure standard library: tensorrt and cuda-python are imported only inside the two probe functions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from . import stamps

ENGINES_DIR = "engines"
PRECISIONS = ("fp32", "fp16")

INSTALL_HINT = (
    "on a Jetson, TensorRT comes with JetPack (JetPack 6.1/6.2 = TensorRT 10.3: `sudo apt install nvidia-jetpack`; "
    "its Python module is system-wide, so make the virtualenv with --system-site-packages); elsewhere install "
    "TensorRT 10.x/11.x from NVIDIA (`pip install tensorrt`). cuda-python: `pip install 'policyrt[gpu]'`"
)


class EngineNotVerified(RuntimeError):
    """The engine has no verify stamp that matches it on this board."""


def sanitize(text: str) -> str:
    """Lower-case, every run of characters other than [a-z0-9.] becomes one '-': safe in file names."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.") or "unknown"


def engine_filename(gpu_name: str, trt_version: str, precision: str) -> str:
    """`NVIDIA Jetson AGX Orin`, `10.3.0.30`, `fp16` -> `nvidia-jetson-agx-orin-trt10.3.0.30-fp16.plan`.

    The full TensorRT version is kept: a plan file only deserializes on the exact version that built it
    (unless built version-compatible, which policyrt does not do).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return f"{sanitize(gpu_name)}-trt{sanitize(trt_version)}-{precision}.plan"


def engine_path(bundle_dir, gpu_name: str, trt_version: str, precision: str) -> Path:
    return Path(bundle_dir) / ENGINES_DIR / engine_filename(gpu_name, trt_version, precision)


def find_engine(bundle_dir, gpu_name: str, trt_version: str, precision: str | None = None) -> Path:
    """The engine for this GPU and TensorRT version; `precision=None` takes fp32 if built, else fp16.

    fp32 first because it is the one that reproduces the reference within 1e-4; ask for fp16 explicitly.
    """
    wanted = PRECISIONS if precision is None else (precision,)
    for p in wanted:
        path = engine_path(bundle_dir, gpu_name, trt_version, p)
        if path.is_file():
            return path
    folder = Path(bundle_dir) / ENGINES_DIR
    present = sorted(p.name for p in folder.glob("*.plan")) if folder.is_dir() else []
    expected = ", ".join(engine_filename(gpu_name, trt_version, p) for p in wanted)
    raise FileNotFoundError(
        f"{folder}: no TensorRT engine for this board (expected {expected}; present: "
        f"{', '.join(present) or 'none'}). Build one on this board: policyrt build-engine {Path(bundle_dir)}"
        + (f" --precision {precision}" if precision else "")
    )


@dataclass(frozen=True)
class Stamp:
    engine: str
    engine_sha256: str
    gpu: str
    tensorrt: str
    precision: str
    tolerance: float
    errors: dict
    verified_at: str


def write_stamp(engine: Path, gpu: str, tensorrt: str, precision: str, tolerance: float, errors: dict,
                now: float | None = None) -> Path:
    """Record that `engine` (its current bytes) passed verify on this GPU and TensorRT version."""
    return stamps.write_stamp(engine, {"gpu": gpu, "tensorrt": tensorrt, "precision": precision}, tolerance, errors, now)


def check_stamp(engine: Path, gpu: str, tensorrt: str) -> Stamp:
    """The engine's stamp if it matches the engine's bytes, this GPU and this TensorRT; else EngineNotVerified."""
    engine = Path(engine)
    how = f"policyrt verify {engine.parent.parent} --backend tensorrt"
    doc = stamps.check_stamp(engine, {"gpu": gpu, "tensorrt": tensorrt}, how, error=EngineNotVerified)
    try:
        return Stamp(**doc)
    except TypeError as err:
        raise EngineNotVerified(f"{stamps.stamp_path(engine)}: unreadable verify stamp ({err}); run `{how}`") from err


def current_gpu_name(device: int = 0) -> str:
    """The CUDA device's name, e.g. `Orin` or `NVIDIA H100 80GB HBM3` (needs cuda-python)."""
    cudart = import_cudart()
    err, props = cudart.cudaGetDeviceProperties(device)
    if int(getattr(err, "value", err)) != 0:
        raise RuntimeError(f"cudaGetDeviceProperties({device}) failed: {err}; {cuda_versions(cudart)}")
    name = props.name
    return (name.decode() if isinstance(name, bytes) else str(name)).split("\x00", 1)[0].strip()


def cuda_python_version() -> str:
    """The installed cuda-python's version: `cuda.bindings.__version__` (12.6+), `cuda.__version__` before."""
    for module in ("cuda.bindings", "cuda"):
        try:
            version = getattr(__import__(module, fromlist=["__version__"]), "__version__", None)
        except ImportError:
            continue
        if version:
            return str(version)
    return "(version unknown)"


def _cuda_version(call) -> str:
    """A cudaRuntimeGetVersion / cudaDriverGetVersion result, 12060 -> "12.6"."""
    try:
        err, value = call()
    except Exception:  # noqa: BLE001 - this only decorates an error message already being raised
        return "unknown"
    if int(getattr(err, "value", err)) != 0:
        return "unknown"
    return f"{int(value) // 1000}.{int(value) % 1000 // 10}"


def cuda_versions(cudart) -> str:
    """"cuda-python 13.0.1 is built for CUDA 13.0, this board has 12.6" (+ the fix when the majors differ).

    The runtime version is the CUDA that cuda-python's runtime bindings were built for; the driver's is
    the newest CUDA this board's driver runs (JetPack 6: 12.x). pip picks the newest cuda-python unless
    capped, and a 13.x one needs a CUDA 13 driver: every call then fails with cudaErrorInsufficientDriver.
    """
    built, board = _cuda_version(cudart.cudaRuntimeGetVersion), _cuda_version(cudart.cudaDriverGetVersion)
    text = f"cuda-python {cuda_python_version()} is built for CUDA {built}, this board has {board}"
    built_major, board_major = built.split(".")[0], board.split(".")[0]
    if built_major.isdigit() and board_major.isdigit() and int(built_major) > int(board_major):
        major = int(board_major)
        text += f": install the cuda-python of the board's CUDA major, pip install 'cuda-python>={major},<{major + 1}'"
    return text


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as err:
        raise ImportError(f"TensorRT (the `tensorrt` Python module) is not installed; {INSTALL_HINT}") from err
    return tensorrt


def import_cudart():
    """cuda-python's runtime module: `cuda.bindings.runtime` (12.6+), else the older `cuda.cudart`."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError as err:
            raise ImportError(f"cuda-python (`cuda.bindings`) is not installed; {INSTALL_HINT}") from err
    return runtime
