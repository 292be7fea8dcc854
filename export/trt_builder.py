"""Build a bundle's TensorRT engine on the machine it will run on (needs TensorRT and cuda-python).

The decisions are made in trt_build.py (pure, tested); this module only speaks TensorRT's Python API, as
documented for 10.x and 11.x: `Builder.create_network(flags)`, `OnnxParser.parse`,
`IBuilderConfig.set_flag/clear_flag`, `create_optimization_profile` + `set_shape(name, min, opt, max)`,
`create_timing_cache` / `set_timing_cache` / `get_timing_cache().serialize()`,
`build_serialized_network`, and `Runtime.deserialize_cuda_engine` to read the built engine's I/O back.
Nothing here ran in this repository's CI (no GPU there): the board-side check is `policyrt verify`.
"""

from __future__ import annotations

import time
from pathlib import Path

from policyrt.bundle import Bundle, sha256_file
from policyrt.runtime.trt_buffers import EngineTensor, check_engine_io
from policyrt.runtime.trt_engines import current_gpu_name, engine_path, import_tensorrt

from .trt_build import (
    BuildConfig,
    BuildError,
    default_timing_cache,
    derive_build_config,
    engine_io_table,
    layers_to_pin,
    record_engine,
)

LOG_LINES_KEPT = 200


def _logger(trt, lines: list[str], echo=None):
    class CollectingLogger(trt.ILogger):
        """Keeps warnings and errors for the manifest's build log (a subclass must call ILogger.__init__)."""

        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                lines.append(f"{severity.name}: {msg}")
                if echo:
                    echo(f"  tensorrt {severity.name.lower()}: {msg}")

    return CollectingLogger()


def _onnx_bytes(bundle: Bundle, config: BuildConfig, out_dir: Path) -> tuple[bytes, str, list[str]]:
    """The graph the parser reads, its recorded name, and the fp16 projection nodes (for weak typing)."""
    if not (config.fp16_onnx or config.pin_fp32):
        return bundle.onnx_path.read_bytes(), "policy.onnx", []
    import onnx

    from .fp16 import convert_to_fp16, fp16_nodes

    model = onnx.load(str(bundle.onnx_path))
    if config.pin_fp32:
        return bundle.onnx_path.read_bytes(), "policy.onnx", fp16_nodes(model)
    path = out_dir / "policy.fp16.onnx"
    onnx.save(convert_to_fp16(model), str(path))
    return path.read_bytes(), f"engines/{path.name}", []


def build_engine(bundle: Bundle, precision: str = "fp32", max_batch: int = 1, opt_batch: int | None = None,
                 timing_cache: Path | None = None, workspace_mib: int | None = None, echo=print) -> Path:
    """Build `engines/<gpu>-trt<version>-<precision>.plan`, record it in the manifest, return its path."""
    trt = import_tensorrt()
    version = trt.__version__
    config = derive_build_config(version, precision, bundle.manifest, max_batch, opt_batch)
    gpu = current_gpu_name()
    out = engine_path(bundle.path, gpu, version, precision)
    out.parent.mkdir(exist_ok=True)
    echo(f"building {out.name}: TensorRT {version} ({config.generation}), {gpu}, {precision}, "
         f"batch 1..{config.max_batch} (opt {config.opt_batch})")
    log: list[str] = []
    logger = _logger(trt, log, echo)
    onnx_bytes, onnx_name, projections = _onnx_bytes(bundle, config, out.parent)

    builder = trt.Builder(logger)
    flags = 0
    if config.strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BuildError(f"the TensorRT ONNX parser refused {onnx_name}: " + "; ".join(errors)
                         + f" (run `policyrt lint {bundle.path} --target {config.generation}`)")

    builder_config = builder.create_builder_config()
    for name in config.set_flags:
        builder_config.set_flag(getattr(trt.BuilderFlag, name))
    for name in config.clear_flags:
        if hasattr(trt.BuilderFlag, name):
            builder_config.clear_flag(getattr(trt.BuilderFlag, name))
    if workspace_mib:
        builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in config.profile.items():
        profile.set_shape(name, lo, opt, hi)
    builder_config.add_optimization_profile(profile)

    pinned = 0
    if config.pin_fp32:
        layers = [network.get_layer(i) for i in range(network.num_layers)]
        described = [(getattr(layer, "metadata", ""), tuple(layer.get_output(j).dtype.name for j in range(layer.num_outputs)))
                     for layer in layers]
        for index in layers_to_pin(described, projections):
            layer = layers[index]
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned += 1

    cache_path = Path(timing_cache) if timing_cache else default_timing_cache(gpu, version)
    cache = builder_config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    if not builder_config.set_timing_cache(cache, ignore_mismatch=False):
        echo(f"  timing cache {cache_path} was made on another device or TensorRT: starting a fresh one")
        builder_config.set_timing_cache(builder_config.create_timing_cache(b""), ignore_mismatch=False)

    started = time.perf_counter()
    plan = builder.build_serialized_network(network, builder_config)
    seconds = time.perf_counter() - started
    if plan is None:
        raise BuildError("TensorRT could not build the engine:\n" + "\n".join(log[-20:]))
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(bytes(plan))
    tmp.replace(out)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_bytes(bytes(builder_config.get_timing_cache().serialize()))

    engine = trt.Runtime(logger).deserialize_cuda_engine(bytes(plan))
    tensors = [EngineTensor(n, engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT, engine.get_tensor_dtype(n).name,
                            tuple(engine.get_tensor_shape(n)))
               for n in (engine.get_tensor_name(i) for i in range(engine.num_io_tensors))]
    check_engine_io(bundle.manifest, tensors, config.max_batch)
    record_engine(bundle.path, {
        "file": out.name, "sha256": sha256_file(out), "gpu": gpu, "tensorrt": version, "precision": precision,
        "onnx": onnx_name, "onnx_sha256": sha256_file(bundle.path / onnx_name), "build": config.to_dict(),
        "fp32_pinned_layers": pinned, "timing_cache": str(cache_path), "build_seconds": round(seconds, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "io": engine_io_table(tensors, config.profile),
        "log": log[-LOG_LINES_KEPT:],
    })
    echo(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {seconds:.0f} s); now run: policyrt verify "
         f"{bundle.path} --backend tensorrt --precision {precision}")
    return out
