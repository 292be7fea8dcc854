"""Replay a bundle's `parity.json` on a backend and compare with the recorded reference outputs.

This is what a board runs before the robot may move: the recorded inputs (with resets in the middle)
go through the backend step by step; every action and the final state are compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from policyrt import contract
from policyrt.arrays import decode_array
from policyrt.bundle import Bundle

DEFAULT_TOLERANCE = 1e-5  # fp32 max abs
# A TensorRT engine is judged looser than ONNX Runtime: its kernels (and their reduction orders) differ
# from the CPU's, and it is built on the board, so a tolerance of parity.json's 1e-5 would fail on rounding.
GPU_FP32_TOLERANCE = TENSORRT_FP32_TOLERANCE = 1e-4
# fp16 engines: the projections compute in fp16 (export/fp16.py). Measured on the shipped bundles' parity
# rollouts with that graph on ONNX Runtime CPU (fp16 MatMul/Gemm kernels, fp32 accumulation like TensorRT's
# tensor cores): max abs action error 5.9e-4 (xLSTM) and 1.0e-3 (DT), states within 4.7e-4 of their size.
# The bound leaves ~5x for kernel and reduction-order differences on the GPU (docs/BOARD.md).
TENSORRT_FP16_TOLERANCE = 5e-3


@dataclass
class OutputError:
    name: str
    max_abs: float
    max_rel: float
    first_step_over: int | None  # first step where the judged error > tolerance; None if never
    max_judged: float = 0.0  # the error the tolerance applies to: absolute, or scaled for states

    def ok(self) -> bool:
        return self.first_step_over is None


@dataclass
class VerifyReport:
    backend: str
    steps: int
    batch: int
    tolerance: float
    outputs: list[OutputError] = field(default_factory=list)
    stamp: str | None = None  # tensorrt: the verify stamp written on a pass (engines/<engine>.verified.json)

    @property
    def ok(self) -> bool:
        return all(o.ok() for o in self.outputs)

    def to_dict(self) -> dict:
        return {
            "backend": self.backend,
            "steps": self.steps,
            "batch": self.batch,
            "tolerance": self.tolerance,
            "ok": self.ok,
            "stamp": self.stamp,
            "outputs": {
                o.name: {"max_abs": o.max_abs, "max_rel": o.max_rel, "max_judged": o.max_judged,
                         "first_step_over": o.first_step_over}
                for o in self.outputs
            },
        }

    def table(self) -> str:
        lines = [
            f"verify on {self.backend}: {self.steps} steps x {self.batch} slots, tolerance {self.tolerance:g} "
            "(actions absolute; states divided by max(1, max |reference|))"
        ]
        for o in self.outputs:
            where = "ok" if o.ok() else f"FAIL from step {o.first_step_over}"
            lines.append(f"  {o.name:<24} max abs {o.max_abs:.2e}  max rel {o.max_rel:.2e}  judged {o.max_judged:.2e}  {where}")
        lines.append("PASS" if self.ok else "FAIL: this backend does not reproduce the reference policy")
        if self.stamp:
            lines.append(f"stamp written: {self.stamp} (the {self.backend} backend now accepts it on this machine)")
        return "\n".join(lines)


def parity_inputs(parity: dict) -> dict[str, np.ndarray]:
    return {name: decode_array(doc) for name, doc in parity["inputs"].items()}


def replay(backend, inputs: dict[str, np.ndarray], on_step=None) -> np.ndarray:
    """Feed recorded inputs [T, B, ...] through `backend`; returns actions [T, B, act_dim]."""
    steps = inputs[contract.OBS].shape[0]
    actions = np.zeros((steps, *backend.action.shape), np.float32)
    for t in range(steps):
        for name, series in inputs.items():
            np.copyto(backend.inputs[name], series[t])
        backend.run()
        actions[t] = backend.action
        if on_step is not None:
            on_step(t, backend)
    return actions


def state_scale(reference: np.ndarray) -> float:
    """What a state tensor's error is divided by before the tolerance applies: max(1, max |reference|).

    fp32 carries ~7 significant digits and some states grow with the episode (an sLSTM's c and n reach
    hundreds, where one ulp is already 3e-5), so states are judged relative to their own size, and
    absolutely while they stay within [-1, 1]. Actions are always judged absolutely.
    """
    return max(1.0, float(np.abs(reference).max(initial=0.0)))


def compare(name: str, got: np.ndarray, want: np.ndarray, tolerance: float, size_scaled: bool = False) -> OutputError:
    """Errors of a [T, ...] series (or a single tensor, T = 1) against the reference."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise ValueError(f"{name}: shape {got.shape} differs from the reference {want.shape}")
    err = np.abs(got - want)
    rel = err / np.maximum(np.abs(want), 1e-6)
    per_step = err.reshape(err.shape[0], -1).max(axis=1) if err.ndim > 1 else err
    if size_scaled:
        per_step = per_step / np.array([state_scale(w) for w in want])
    over = np.flatnonzero(~(per_step <= tolerance))  # NaN counts as over
    return OutputError(
        name=name,
        max_abs=float(np.nan_to_num(err, nan=np.inf).max(initial=0.0)),
        max_rel=float(np.nan_to_num(rel, nan=np.inf).max(initial=0.0)),
        first_step_over=int(over[0]) if over.size else None,
        max_judged=float(np.nan_to_num(per_step, nan=np.inf).max(initial=0.0)),
    )


def slot_passes(parity_batch: int, batch: int) -> list[list[int]]:
    """The parity slots each replay feeds a backend of `batch` slots, so that every recorded slot is
    replayed: one pass when the batches match, several for a smaller fixed-batch artifact, slots repeated
    to fill a larger one."""
    passes = -(-parity_batch // batch)
    return [[(k * batch + j) % parity_batch for j in range(batch)] for k in range(passes)]


def parity_report(backend, parity: dict, inputs: dict[str, np.ndarray], tolerance: float) -> VerifyReport:
    """Replay parity.json's `inputs` on `backend` (every recorded slot, in passes of the backend's batch:
    step 0 resets every slot); every action and the final state compared with the recorded reference."""
    steps = inputs[contract.OBS].shape[0]
    reference = parity["reference"]
    actions, finals, order = [], [], []
    for slots in slot_passes(inputs[contract.OBS].shape[1], backend.batch_size):
        actions.append(replay(backend, {name: series[:, slots] for name, series in inputs.items()}))
        finals.append(backend.state())
        order += slots
    report = VerifyReport(backend=backend.name, steps=steps, batch=backend.batch_size, tolerance=tolerance)
    report.outputs.append(compare("action", np.concatenate(actions, axis=1),
                                  decode_array(reference["action"])[:, order], tolerance))
    for name, doc in reference["final_state"].items():
        got = np.concatenate([final[name] for final in finals])
        report.outputs.append(compare(f"{contract.state_name(name)} (final)", got[None], decode_array(doc)[order][None],
                                      tolerance, size_scaled=True))
    return report


def default_tolerance(backend, parity: dict) -> float:
    """parity.json's tolerance for the CPU backends; GPU backends as issue 6 sets them: fp32 kernels on a
    GPU (TF32 off) reorder reductions, so 1e-4; TensorRT fp16 engines by their documented bound."""
    if backend.name == "torch-cuda" and backend.device.type == "cuda":
        return GPU_FP32_TOLERANCE
    if backend.name == "tensorrt":
        return TENSORRT_FP16_TOLERANCE if getattr(backend, "precision", "fp32") == "fp16" else TENSORRT_FP32_TOLERANCE
    return float(parity.get("tolerance", DEFAULT_TOLERANCE))


STAMPED = ("tensorrt", "iree")  # backends whose board-built artifact needs a verify stamp before it may run


def verify_backend(bundle: Bundle, backend_name: str = "onnxruntime", tolerance: float | None = None,
                   batch_size: int | None = None, **options) -> VerifyReport:
    """Replay parity.json on a backend; for tensorrt and iree, a pass also writes the artifact's verify stamp.

    `options` go to the backend (tensorrt: `precision`). verify is what makes a TensorRT engine or an IREE
    artifact usable, so it opens it with `require_verified=False`. `batch_size`: the backend's slots
    (default: parity.json's; iree: 1, the fixed batch of the artifact to verify).
    """
    from . import make_backend, resolve_backend

    name = resolve_backend(backend_name)
    if name in STAMPED:
        options.setdefault("require_verified", False)
    parity = bundle.parity()
    inputs = parity_inputs(parity)
    batch = batch_size or (1 if name == "iree" else inputs[contract.OBS].shape[1])
    backend = make_backend(bundle, name, batch, **options)
    try:
        tol = float(tolerance if tolerance is not None else default_tolerance(backend, parity))
        report = parity_report(backend, parity, inputs, tol)
        if backend.name in STAMPED and report.ok:
            report.stamp = str(stamp_engine(backend, report))
    finally:
        backend.close()
    return report


def stamp_engine(backend, report: VerifyReport):
    """Write the verify stamp of the engine or artifact `backend` ran (keyed by the file's sha256)."""
    errors = {o.name: o.max_judged for o in report.outputs}
    if backend.name == "iree":
        from .stamps import write_stamp

        return write_stamp(backend.artifact_path, {"cpu": backend.cpu, "batch": backend.batch_size},
                           report.tolerance, errors)
    from .trt_engines import write_stamp

    return write_stamp(backend.engine_path, backend.gpu_name, backend.tensorrt_version, backend.precision,
                       report.tolerance, errors)
