"""IREE artifacts inside a bundle: this CPU's name, file names, the packed-carry layout, the load-time checks.

`policyrt build-engine BUNDLE --backend iree --batch N` compiles the step graph for one CPU and one batch
size into `engines/iree-<cpu>-b<N>.vmfb` and records it in the manifest's `engines` (outside the bundle
digest, like TensorRT engines). The compiled step does not take the contract's 14 tensors: the build
rewrites the graph so that the host inputs travel as two tensors, the whole recurrent state as one
"carry" per dtype (see `carry_layout`) and the action is written in place into a host buffer, because
marshalling each tensor through the runtime's Python binding costs about a microsecond and mapping a
returned buffer to read it a few. The layout is derived from the manifest
alone, so the build and the backend cannot disagree.

`policyrt verify --backend iree` replays parity.json on the artifact and writes the same sha256-keyed
stamp as TensorRT engines (runtime/stamps.py), keyed here by the CPU. The backend refuses an artifact
that is unverified, built for another CPU or batch size, or built from another version of the bundle.

Standard library and numpy only: the compiler and runtime are imported where they are used.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policyrt import contract
from policyrt.bundle import Manifest

from .trt_engines import ENGINES_DIR, sanitize

INSTALL_HINT = "pip install 'policyrt[iree]'"
ARTIFACT_PREFIX, ARTIFACT_SUFFIX = "iree-", ".vmfb"
FUNCTION = "step"  # the compiled module's entry point (the rewritten graph's name)
HOST, RESET_INPUT = "host", "reset"  # the rewritten graph's host inputs: the float inputs packed, and reset
ALIGNMENT = 64  # bytes: IREE's CPU kernels crash on host buffers imported with less
# The compiled step's calling convention (arguments, carries, in-place action), recorded per artifact:
# bump it when the build's rewrite changes, so that older artifacts are refused with "rebuild".
ABI = 1

# ARM's CPU part numbers (implementer 0x41 in /proc/cpuinfo) as LLVM names them (-mcpu), so that an
# artifact cross-compiled with --target-cpu cortex-a78ae is recognized on a Jetson Orin.
ARM_PARTS = {0xD03: "cortex-a53", 0xD05: "cortex-a55", 0xD07: "cortex-a57", 0xD08: "cortex-a72",
             0xD0B: "cortex-a76", 0xD0C: "neoverse-n1", 0xD40: "neoverse-v1", 0xD41: "cortex-a78",
             0xD42: "cortex-a78ae", 0xD49: "neoverse-n2", 0xD4F: "neoverse-v2"}
ARM_TRIPLE = "aarch64-unknown-linux-gnu"


class ArtifactError(RuntimeError):
    """No usable artifact: missing, unverified, or built for another CPU, batch size or bundle."""


def this_cpu(cpuinfo: str | None = None, machine: str | None = None) -> str:
    """`<arch> <model>`: x86 `model name`, ARM cores by LLVM name (`aarch64 cortex-a78ae`) or part number."""
    machine = machine or platform.machine()
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    if "model name" in fields:
        return f"{machine} {fields['model name']}"
    if fields.get("cpu implementer", "").lower() == "0x41" and "cpu part" in fields:
        part = int(fields["cpu part"], 16)
        return f"{machine} {ARM_PARTS.get(part, f'arm-part-{part:#x}')}"
    return f"{machine} {fields.get('cpu part', 'unknown')}"


def target_cpu_id(target_cpu: str, triple: str | None) -> str:
    """What an artifact records as its CPU: this CPU for `host`, else `<arch of the triple> <NAME>`."""
    if target_cpu == "host":
        return this_cpu()
    arch = (triple or default_triple(target_cpu)).split("-", 1)[0]
    return f"{arch} {target_cpu}"


def default_triple(target_cpu: str) -> str | None:
    """The aarch64 Linux triple for ARM cores LLVM knows; None (the host's) for everything else."""
    return ARM_TRIPLE if target_cpu in ARM_PARTS.values() else None


def artifact_filename(cpu: str, batch: int) -> str:
    return f"{ARTIFACT_PREFIX}{sanitize(cpu)}-b{int(batch)}{ARTIFACT_SUFFIX}"


def artifact_path(bundle_dir, cpu: str, batch: int) -> Path:
    return Path(bundle_dir) / ENGINES_DIR / artifact_filename(cpu, batch)


def build_command(bundle_dir, batch: int) -> str:
    return f"policyrt build-engine {bundle_dir} --backend iree --batch {batch}"


def verify_command(bundle_dir, batch: int) -> str:
    return f"policyrt verify {bundle_dir} --backend iree" + (f" --batch {batch}" if batch != 1 else "")


def find_artifact(bundle, batch: int, cpu: str | None = None) -> tuple[Path, dict]:
    """The artifact for this CPU and `batch` and its manifest record, checked against the bundle as it is
    now; ArtifactError (one line, naming the command that fixes it) otherwise."""
    cpu = cpu or this_cpu()
    path = artifact_path(bundle.path, cpu, batch)
    records = bundle.manifest.raw.get("engines") or {}
    record = records.get(path.name)
    if not path.is_file() or not isinstance(record, dict):
        present = sorted(name for name in records if name.startswith(ARTIFACT_PREFIX))
        raise ArtifactError(
            f"{path.parent / path.name}: no IREE artifact for this CPU ({cpu}) at batch {batch} "
            f"(built: {', '.join(present) or 'none'}); build it: {build_command(bundle.path, batch)}")
    if record.get("batch") != batch or record.get("cpu") != cpu:
        raise ArtifactError(f"{path}: recorded for CPU {record.get('cpu')!r} at batch {record.get('batch')}, "
                            f"not {cpu!r} at batch {batch}; rebuild it: {build_command(bundle.path, batch)}")
    if record.get("abi") != ABI:
        raise ArtifactError(f"{path}: built by another policyrt (calling convention {record.get('abi')}, this one "
                            f"runs {ABI}); rebuild it: {build_command(bundle.path, batch)}")
    if record.get("bundle_digest") != bundle.digest:
        raise ArtifactError(f"{path}: built from another version of this bundle (its digest changed); "
                            f"rebuild it: {build_command(bundle.path, batch)}")
    return path, record


@dataclass(frozen=True)
class CarrySlice:
    """Where one state tensor lives inside its dtype's carry row."""

    state: contract.StateTensor
    start: int
    stop: int


@dataclass(frozen=True)
class Carry:
    """One packed state tensor [B, width] of one dtype: its states in manifest order."""

    dtype: str
    width: int
    slices: tuple[CarrySlice, ...]

    @property
    def input_name(self) -> str:
        return f"carry.{self.dtype}"

    @property
    def output_name(self) -> str:
        return f"carry.{self.dtype}.next"


def carry_layout(manifest: Manifest) -> tuple[Carry, ...]:
    """The carries of this bundle, one per state dtype in order of appearance (the xLSTM: one float32
    carry; the DT: float32 and its int32 counters)."""
    carries = []
    for dtype in dict.fromkeys(s.dtype for s in manifest.state):
        column, slices = 0, []
        for state in (s for s in manifest.state if s.dtype == dtype):
            size = int(np.prod(state.shape, dtype=np.int64))
            slices.append(CarrySlice(state, column, column + size))
            column += size
        carries.append(Carry(dtype, column, tuple(slices)))
    return tuple(carries)


def host_columns(manifest: Manifest) -> dict[str, tuple[int, int]]:
    """Column ranges of the float host inputs inside the packed `host` input [B, obs + act + 2]."""
    widths = {contract.OBS: manifest.obs_dim, contract.PREV_ACTION: manifest.act_dim,
              contract.REWARD: 1, contract.TARGET_RETURN: 1}
    columns, start = {}, 0
    for name, width in widths.items():
        columns[name] = (start, start + width)
        start += width
    return columns


def aligned_empty(shape: tuple[int, ...], dtype, alignment: int = ALIGNMENT) -> np.ndarray:
    """An uninitialized C-contiguous array whose data starts on an `alignment`-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + alignment, np.uint8)
    offset = (-raw.ctypes.data) % alignment
    return raw[offset:offset + nbytes].view(dtype).reshape(shape)


# Policy kinds `auto` runs on IREE when a verified artifact is there: the compiled xLSTM step is 2.5-3x
# ONNX Runtime's, the DT's 1.2x slower (arithmetic-bound: issue 17), so the DT stays on ONNX Runtime.
AUTO_KINDS = ("xlstm",)
_said: set[str] = set()


def auto_choice(bundle, batch: int, fallback: str) -> str:
    """`iree` for a bundle of AUTO_KINDS with a verified artifact for this CPU and `batch`, else `fallback`.
    A bundle with IREE artifacts built gets what was chosen and why said once per process (stderr); one
    without any stays quiet: ONNX Runtime is then simply the default."""
    import sys

    kind = (bundle.manifest.raw.get("policy") or {}).get("kind")
    built = any(name.startswith(ARTIFACT_PREFIX) for name in bundle.manifest.raw.get("engines") or {})
    if kind not in AUTO_KINDS or not built:
        return fallback
    from .stamps import check_stamp

    try:
        import importlib.util

        if importlib.util.find_spec("iree.runtime") is None:
            raise ArtifactError(f"the IREE runtime is not installed ({INSTALL_HINT})")
        path, _ = find_artifact(bundle, batch)
        check_stamp(path, {"cpu": this_cpu(), "batch": batch}, verify_command(bundle.path, batch), error=ArtifactError)
        choice, why = "iree", f"{path.name}, verified on this CPU"
    except (ArtifactError, ImportError, ValueError) as err:
        choice, why = fallback, str(err)
    message = f"backend auto: {choice} for {bundle.path} at batch {batch} ({why})"
    if message not in _said:
        _said.add(message)
        print(message, file=sys.stderr)
    return choice
