"""Compile a bundle's step graph with IREE for one CPU and one batch size (`policyrt build-engine --backend iree`).

ONNX (opset 17, as exported) -> rewritten for the backend (below) -> `iree-import-onnx` -> `iree-compile`
for llvm-cpu -> `engines/iree-<cpu>-b<batch>.vmfb`, recorded in the manifest's `engines` with the
compiler version, its flags, the target CPU and the bundle digest it was built from.

The rewrite, done with the `onnx` package before import: the batch dimension becomes the fixed `batch`
(a dynamic-batch build runs 2.7x slower: issue 17), the float host inputs arrive packed as one `host`
tensor and the recurrent state as one carry per dtype (iree_artifacts.carry_layout). After import, the
action is made an in-place output (`action_in_place`). The step graph's own nodes are untouched: new Split /
Reshape nodes produce the tensors its nodes read, under their contract names, and a Concat gathers the
outputs. Nothing is half-written: the artifact is compiled into a temporary file and renamed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from policyrt import contract
from policyrt.bundle import Bundle, BundleError, sha256_file

from .iree_artifacts import (
    ABI,
    FUNCTION,
    HOST,
    INSTALL_HINT,
    RESET_INPUT,
    artifact_path,
    carry_layout,
    default_triple,
    host_columns,
    target_cpu_id,
    verify_command,
)

# issue 17: O3, aggressive fusion and ukernels take the xLSTM step from 58 to 34 dispatches. Measured
# here (reacher xLSTM, Python invoke, interleaved): O3 helps at batch 1 only (24 us against 31 at O2)
# and makes every larger batch 1.5-2x slower (batch 2: 60 against 40 us; 16: 356 against 187), so it
# is added for batch 1 alone. Fusion and ukernels change little either way. The target CPU is per build.
COMPILE_FLAGS = ("--iree-dispatch-creation-enable-aggressive-fusion=true", "--iree-llvmcpu-enable-ukernels=all")
BATCH_1_FLAGS = ("--iree-opt-level=O3",)


class IreeBuildError(RuntimeError):
    """The import or the compile failed; one line, the tool's first error."""


def compiler_version() -> str:
    try:
        return metadata.version("iree-base-compiler")
    except metadata.PackageNotFoundError as err:
        raise ImportError(f"the IREE compiler (iree-base-compiler) is not installed: {INSTALL_HINT}") from err


def packed_step_model(model, manifest, batch: int):
    """The step graph of `model` with a fixed batch, packed host inputs and one state carry per dtype.

    Inputs: host, reset, then the carries; outputs: action, then the carries' next values."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    nodes, gather, counter = [], [], iter(range(1 << 30))

    def constant(values) -> str:
        name = f"iree_pack.c{next(counter)}"
        nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(values, np.int64))))
        return name

    def split(source: str, widths: list[int], names: list[str], shapes: list[tuple[int, ...]]) -> None:
        pieces = [f"{n}.packed" for n in names]
        nodes.append(helper.make_node("Split", [source, constant(widths)], pieces, axis=1))
        for piece, name, shape in zip(pieces, names, shapes):
            nodes.append(helper.make_node("Reshape", [piece, constant([batch, *shape])], [name]))

    columns = host_columns(manifest)
    split(HOST, [stop - start for start, stop in columns.values()], list(columns),
          [contract.HOST_INPUTS[contract.INPUTS.index(n)].shape(manifest.obs_dim, manifest.act_dim) for n in columns])
    reset_type = next(i for i in graph.input if i.name == contract.RESET).type.tensor_type.elem_type
    inputs = [helper.make_tensor_value_info(HOST, TensorProto.FLOAT, [batch, max(b for _, b in columns.values())]),
              helper.make_tensor_value_info(RESET_INPUT, reset_type, [batch])]
    outputs = [helper.make_tensor_value_info(contract.ACTION, TensorProto.FLOAT, [batch, manifest.act_dim])]
    for carry in carry_layout(manifest):
        split(carry.input_name, [p.stop - p.start for p in carry.slices], [p.state.input_name for p in carry.slices],
              [p.state.shape for p in carry.slices])
        flat = [f"{p.state.output_name}.flat" for p in carry.slices]
        for piece, name in zip(carry.slices, flat):
            gather.append(helper.make_node("Reshape", [piece.state.output_name, constant([batch, -1])], [name]))
        gather.append(helper.make_node("Concat", flat, [carry.output_name], axis=1))
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(carry.dtype))
        inputs.append(helper.make_tensor_value_info(carry.input_name, elem, [batch, carry.width]))
        outputs.append(helper.make_tensor_value_info(carry.output_name, elem, [batch, carry.width]))
    packed = helper.make_model(
        helper.make_graph([*nodes, *graph.node, *gather], FUNCTION, inputs, outputs, initializer=list(graph.initializer)),
        opset_imports=list(model.opset_import), ir_version=model.ir_version)
    onnx.checker.check_model(packed)
    return packed


_SIGNATURE = re.compile(r"func\.func @" + FUNCTION + r"\((?P<args>[^)]*)\) -> \((?P<results>[^)]*)\)")
_RETURN = re.compile(r"^(?P<indent>[ \t]*)return (?P<values>%[\w#]+(?:, %[\w#]+)*) : (?P<types>.*)$", re.MULTILINE)
_TYPE = re.compile(r"!torch\.vtensor<\[[^\]]*\],\w+>")


def action_in_place(mlir: str) -> str:
    """The imported module with the action (the first result) written into one more argument, a mutable
    tensor the caller supplies (its host buffer), instead of returned: reading a returned buffer from
    Python means mapping it every call (~4 us of the ~30 us step, measured). The IREE torch input
    conversion turns `torch.overwrite.tensor.contents` on a `!torch.tensor` argument into a write to
    that argument's buffer. The carries stay results: carried in place too, the step ran slower."""
    signature, returns = _SIGNATURE.findall(mlir), _RETURN.findall(mlir)
    if len(signature) != 1 or len(returns) != 1:
        raise IreeBuildError(f"the imported module has {len(signature)} `{FUNCTION}` signatures and {len(returns)} "
                             "returns, expected one of each (iree-import-onnx output changed?)")
    args, results = signature[0]
    indent, values, types = returns[0]
    result_types, values = _TYPE.findall(results), values.split(", ")
    if len(result_types) < 2 or _TYPE.findall(types) != result_types or len(values) != len(result_types):
        raise IreeBuildError(f"the imported `{FUNCTION}` returns {results!r}, expected the action and the carries")
    action_type, carry_types = result_types[0], result_types[1:]
    mutable = action_type.replace("!torch.vtensor", "!torch.tensor")
    out_arg = f"%arg{args.count('%arg')}"
    new_results = carry_types[0] if len(carry_types) == 1 else f"({', '.join(carry_types)})"
    mlir = _SIGNATURE.sub(lambda m: f"func.func @{FUNCTION}({args}, {out_arg}: {mutable}) -> {new_results}", mlir)
    return _RETURN.sub(lambda m: f"{indent}torch.overwrite.tensor.contents {values[0]} overwrites {out_arg} : "
                       f"{action_type}, {mutable}\n{indent}return {', '.join(values[1:])} : {', '.join(carry_types)}", mlir)


def check_graph(model, bundle: Bundle) -> None:
    """The step graph against the manifest (contract.check_graph_io), before anything is compiled."""
    from onnx import helper

    def io(values) -> dict:
        return {v.name: (tuple(d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim),
                         helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name) for v in values}

    try:
        contract.check_graph_io(bundle.manifest, io(model.graph.input), io(model.graph.output))
    except ValueError as exc:
        raise BundleError(f"{bundle.onnx_path}: {exc}") from None


def compile_flags(target_cpu: str, triple: str | None, batch: int) -> list[str]:
    flags = ["--iree-hal-target-device=local", "--iree-hal-local-target-device-backends=llvm-cpu",
             f"--iree-llvmcpu-target-cpu={target_cpu}", *(BATCH_1_FLAGS if batch == 1 else ()), *COMPILE_FLAGS]
    if triple:
        flags.append(f"--iree-llvmcpu-target-triple={triple}")
    return flags


def _first_error(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["(no output)"])[0][:300]


def compile_step(bundle: Bundle, batch: int, out: Path, target_cpu: str = "host", triple: str | None = None) -> list[str]:
    """Write the compiled artifact for `batch` to `out` (via a temporary file); returns the compile flags."""
    try:
        import onnx
        from iree.compiler import tools as iree_tools
    except ImportError as err:
        raise ImportError(f"building an IREE artifact needs the IREE compiler and onnx: {INSTALL_HINT}") from err
    flags = compile_flags(target_cpu, triple, batch)
    with tempfile.TemporaryDirectory(prefix="policyrt-iree-") as work:
        graph = Path(work) / "step.onnx"
        model = onnx.load(str(bundle.onnx_path))
        check_graph(model, bundle)
        onnx.save(packed_step_model(model, bundle.manifest, batch), str(graph))
        mlir = Path(work) / "step.mlir"
        imported = subprocess.run([sys.executable, "-m", "iree.compiler.tools.import_onnx", str(graph), "-o", str(mlir)],
                                  capture_output=True, text=True)
        if imported.returncode != 0:
            raise IreeBuildError(f"iree-import-onnx could not import {bundle.onnx_path}: {_first_error(imported.stderr)}")
        mlir.write_text(action_in_place(mlir.read_text()))
        tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")  # two builds at once never share one
        try:
            iree_tools.compile_file(str(mlir), output_file=str(tmp), extra_args=flags)
            os.replace(tmp, out)
        except iree_tools.CompilerToolError as err:
            raise IreeBuildError(f"iree-compile failed for {out.name}: {_first_error(str(err))}") from err
        finally:
            tmp.unlink(missing_ok=True)
    return flags


def build_artifact(bundle: Bundle, batch: int = 1, target_cpu: str = "host", triple: str | None = None,
                   echo=print) -> Path:
    """Compile `engines/iree-<cpu>-b<batch>.vmfb`, record it in the manifest, return its path."""
    from policyrt.export.trt_build import record_engine

    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")
    version = compiler_version()
    triple = triple or default_triple(target_cpu)
    cpu = target_cpu_id(target_cpu, triple)
    out = artifact_path(bundle.path, cpu, batch)
    out.parent.mkdir(exist_ok=True)
    echo(f"compiling {out.name}: IREE {version}, llvm-cpu, target CPU {target_cpu} ({cpu}), batch {batch}")
    started = time.perf_counter()
    flags = compile_step(bundle, batch, out, target_cpu, triple)
    seconds = time.perf_counter() - started
    record_engine(bundle.path, {
        "file": out.name, "backend": "iree", "abi": ABI, "sha256": sha256_file(out), "cpu": cpu, "target_cpu": target_cpu,
        "target_triple": triple, "batch": batch, "compiler": f"iree-base-compiler {version}", "flags": flags,
        "onnx_sha256": sha256_file(bundle.onnx_path), "bundle_digest": bundle.digest,
        "build_seconds": round(seconds, 2),
    })
    echo(f"wrote {out} ({out.stat().st_size // 1024} KiB, {seconds:.1f} s); before use, on that CPU: "
         f"{verify_command(bundle.path, batch)}")
    return out
