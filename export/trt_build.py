"""Everything about building a TensorRT engine that can be decided without TensorRT: pure and unit-tested.

Two generations, two ways to get fp16 (NVIDIA's 10.x -> 11.x migration guide; the Python API's
NetworkDefinitionCreationFlag and BuilderFlag pages):
- 10.0 - 10.11 (JetPack 6 ships 10.3): weakly typed. fp16 is the FP16 builder flag; every float layer that
  is not a weight projection is pinned to fp32 with layer.precision under PREFER_PRECISION_CONSTRAINTS, so
  state, gates and LayerNorm stay fp32 as in the strongly typed graph (export/fp16.py picks the same nodes).
- 10.12+ and 11.x: strongly typed (weak typing deprecated in 10.12, removed in 11.0, where the flag is
  accepted and ignored). TensorRT computes in the types the ONNX states, so fp16 means building from the
  fp16 graph of export/fp16.py; there is no FP16 flag to set (11.x removed it).
TF32 is cleared in every build: TensorRT enables it by default for fp32 matmuls on Ampere and later (Orin
included), and its 10-bit mantissa would break the fp32 engine's 1e-4 verify tolerance.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from policyrt.bundle import MANIFEST, Manifest
from policyrt.runtime.trt_buffers import EngineTensor, expected_io
from policyrt.runtime.trt_engines import sanitize

PRECISIONS = ("fp32", "fp16")
STRONG_TYPING_FROM = (10, 12)


class BuildError(RuntimeError):
    """The engine could not be built; the message carries the parser's or builder's own words."""


def parse_version(text: str) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", str(text))
    if len(numbers) < 2:
        raise ValueError(f"not a TensorRT version: {text!r}")
    return tuple(int(n) for n in numbers)


def generation(version) -> str:
    """The lint target a TensorRT version belongs to: trt10.3 (10.0-10.11), trt10 (10.12+), trt11 (11.x+)."""
    v = parse_version(version) if isinstance(version, str) else tuple(version)
    if v[0] < 10:
        raise BuildError(f"TensorRT {'.'.join(map(str, v))} is too old: policyrt needs 10.x or later "
                         "(the named-tensor API: set_tensor_address / execute_async_v3)")
    if v[0] >= 11:
        return "trt11"
    return "trt10" if v[:2] >= STRONG_TYPING_FROM else "trt10.3"


def profile_shapes(manifest: Manifest, max_batch: int, opt_batch: int | None = None) -> dict[str, tuple]:
    """min/opt/max shapes of every input, state tensors included: the batch varies, nothing else does."""
    opt = max_batch if opt_batch is None else opt_batch
    if max_batch < 1 or not 1 <= opt <= max_batch:
        raise ValueError(f"need 1 <= opt batch ({opt}) <= max batch ({max_batch})")
    rest = {name: shape for name, (is_input, _, shape) in expected_io(manifest).items() if is_input}
    return {name: ((1, *dims), (opt, *dims), (max_batch, *dims)) for name, dims in rest.items()}


@dataclass(frozen=True)
class BuildConfig:
    tensorrt: str
    generation: str
    precision: str
    strongly_typed: bool  # create the network with NetworkDefinitionCreationFlag.STRONGLY_TYPED
    fp16_onnx: bool  # parse the fp16 graph (export/fp16.py) instead of policy.onnx
    set_flags: tuple[str, ...]  # BuilderFlag names
    clear_flags: tuple[str, ...]  # BuilderFlag names, cleared where the enum still has them
    pin_fp32: bool  # weakly typed fp16: float layers outside the fp16 projections get precision fp32
    max_batch: int
    opt_batch: int
    profile: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        doc = asdict(self)
        doc["profile"] = {k: {"min": list(v[0]), "opt": list(v[1]), "max": list(v[2])} for k, v in self.profile.items()}
        return doc


def derive_build_config(tensorrt_version: str, precision: str, manifest: Manifest, max_batch: int = 1,
                        opt_batch: int | None = None) -> BuildConfig:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    gen = generation(tensorrt_version)
    strongly_typed = gen != "trt10.3"
    fp16 = precision == "fp16"
    weak_fp16 = fp16 and not strongly_typed
    return BuildConfig(
        tensorrt=str(tensorrt_version), generation=gen, precision=precision, strongly_typed=strongly_typed,
        fp16_onnx=fp16 and strongly_typed,
        set_flags=("FP16", "PREFER_PRECISION_CONSTRAINTS") if weak_fp16 else (),
        clear_flags=("TF32",), pin_fp32=weak_fp16, max_batch=max_batch,
        opt_batch=max_batch if opt_batch is None else opt_batch,
        profile=profile_shapes(manifest, max_batch, opt_batch),
    )


def onnx_node_of(layer_metadata: str) -> str | None:
    """The ONNX node a TensorRT layer came from. The parser tags layers `[ONNX Layer: <node> | ...]`
    (onnx-tensorrt importerUtils.cpp processMetadata, 8.6+); layer names cannot be used because the parser
    suffixes them (`/blocks.0/MatMul` vs `/blocks.0/MatMul_1` would be ambiguous)."""
    match = re.match(r"\[ONNX Layer: (.*?)(?: \| .*)?\]$", layer_metadata or "", re.S)
    return match.group(1) if match else None


def layers_to_pin(layers: list[tuple[str, tuple[str, ...]]], fp16_nodes) -> list[int]:
    """Indices of layers to pin to fp32 in a weakly typed fp16 build: those from an ONNX node that is not an
    fp16 projection and whose outputs are all FLOAT. `layers` = [(metadata, output dtype names)].

    Pinning nothing is refused: it means the layers carry no ONNX-node metadata this parser tags (or none
    that is recognized), and an engine built anyway would be free to run state, gates and LayerNorm in
    fp16 while its manifest recorded `fp32_pinned_layers: 0` as if that had been the plan."""
    keep_fp16 = set(fp16_nodes)
    pinned = []
    for index, (metadata, out_dtypes) in enumerate(layers):
        node = onnx_node_of(metadata)
        if node is not None and node not in keep_fp16 and out_dtypes and all(d == "FLOAT" for d in out_dtypes):
            pinned.append(index)
    if not pinned:
        tagged = sum(onnx_node_of(metadata) is not None for metadata, _ in layers)
        sample = next((metadata for metadata, _ in layers if metadata), "")
        raise BuildError(
            f"fp16 build: fp32 pinning matched 0 of {len(layers)} TensorRT layers ({tagged} carry an "
            f"`[ONNX Layer: ...]` tag{f'; e.g. {sample[:80]!r}' if sample else ', none has metadata'}), so "
            "state, gates and LayerNorm could run in fp16. Build --precision fp32, or use TensorRT 10.12+ "
            "(strongly typed fp16 from the converted graph)")
    return pinned


def default_timing_cache(gpu_name: str, tensorrt_version: str, home: Path | None = None) -> Path:
    """One timing cache per board kind, shared by every bundle built there (timing data is per GPU and TRT)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or (Path(home or Path.home()) / ".cache"))
    return base / "policyrt" / "timing" / f"{sanitize(gpu_name)}-trt{sanitize(tensorrt_version)}.cache"


def engine_io_table(tensors: list[EngineTensor], profile: dict) -> list[dict]:
    """The engine's I/O as recorded in the manifest: name, direction, dtype, shape, and the profile range."""
    rows = []
    for t in tensors:
        row = {"name": t.name, "mode": "input" if t.is_input else "output", "dtype": t.dtype, "shape": list(t.shape)}
        if t.name in profile:
            row["profile"] = {"min": list(profile[t.name][0]), "opt": list(profile[t.name][1]),
                              "max": list(profile[t.name][2])}
        rows.append(row)
    return rows


def record_engine(bundle_dir, entry: dict) -> None:
    """Add or replace `manifest.engines[entry['file']]`, leaving everything else — `files` included — as it
    was. The manifest is not itself listed in `files` and engines/ is excluded from it, so the bundle's
    checksums still hold (policyrt.bundle.write_manifest would rehash, which is not wanted here)."""
    path = Path(bundle_dir) / MANIFEST
    doc = json.loads(path.read_text())
    doc.setdefault("engines", {})[entry["file"]] = entry
    tmp = path.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
