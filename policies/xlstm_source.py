"""The `--from xlstm-stack` source format, read by the import and by `compare --from xlstm-stack`.

A directory with `config.json` (the stack's `xLSTMBlockStackConfig` as a dict under "stack", plus
dims, the input features the input projection reads, the output squash and bounds; docs/BUNDLE.md,
"Importing", "xlstm-stack") and `model.safetensors` (`backbone.*` = the stack's state_dict,
`input_proj.*`, `output_proj.*`). sLSTM cells trained with the CUDA backend store their recurrent
kernel and bias in that backend's layout; the last two functions convert them.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

from .importers import ImportRefused

FORMAT = 1
FEATURES = ("obs", "prev_action", "reward", "return_to_go")  # the policy's token order
SOURCE_FIELDS = (
    "format", "stack", "obs_dim", "act_dim", "inputs", "action_squash", "action_low", "action_high",
    "obs_mean", "obs_std", "return_scale", "target_return", "input_bias", "output_bias",
)


def read_source(path: Path) -> tuple[dict, Path]:
    path = Path(path)
    config_file = path / "config.json"
    for name in ("config.json", "model.safetensors"):
        if not (path / name).is_file():
            raise ImportRefused(f"{path}: no {name} (an xlstm-stack source is a directory with config.json and model.safetensors)")
    source = json.loads(config_file.read_text())
    unknown = sorted(set(source) - set(SOURCE_FIELDS))
    if unknown:
        raise ImportRefused(f"{config_file}: unknown field(s) {', '.join(unknown)} (known: {', '.join(SOURCE_FIELDS)})")
    if source.get("format", FORMAT) != FORMAT:
        raise ImportRefused(f"{config_file}: format {source['format']!r} is not supported (this version reads {FORMAT})")
    for name in ("stack", "obs_dim", "act_dim", "inputs", "action_squash"):
        if source.get(name) is None:
            raise ImportRefused(f"{config_file}: field {name!r} is missing")
    inputs = source["inputs"]
    if not isinstance(inputs, list) or not inputs or len(set(inputs)) != len(inputs) or set(inputs) - set(FEATURES):
        raise ImportRefused(f"{config_file}: field 'inputs' must list distinct features out of {FEATURES}, got {inputs!r}")
    if source["action_squash"] not in ("tanh", "none"):
        raise ImportRefused(f"{config_file}: field 'action_squash' must be 'tanh' or 'none', got {source['action_squash']!r}")
    return source, config_file


def stack_config_from_dict(data: dict, where: str = "stack"):
    """`xLSTMBlockStackConfig` from a dict (its `dataclasses.asdict`, or hand-written like the package's
    YAML examples), strictly: unknown fields are refused. Fields the package derives (leading underscore)
    are recomputed by it; what they describe is checked against the weights' shapes."""
    import xlstm

    nested = {
        (xlstm.xLSTMBlockStackConfig, "mlstm_block"): xlstm.mLSTMBlockConfig,
        (xlstm.xLSTMBlockStackConfig, "slstm_block"): xlstm.sLSTMBlockConfig,
        (xlstm.mLSTMBlockConfig, "mlstm"): xlstm.mLSTMLayerConfig,
        (xlstm.sLSTMBlockConfig, "slstm"): xlstm.sLSTMLayerConfig,
        (xlstm.sLSTMBlockConfig, "feedforward"): xlstm.FeedForwardConfig,
    }

    def build(cls, values, path):
        if not isinstance(values, dict):
            raise ImportRefused(f"config.json: {path} must be an object, got {values!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ImportRefused(
                f"config.json: unknown field(s) {', '.join(f'{path}.{u}' for u in unknown)} "
                f"(xlstm's {cls.__name__} has no such field)"
            )
        kwargs = {}
        for key, value in values.items():
            sub = nested.get((cls, key))
            kwargs[key] = build(sub, value, f"{path}.{key}") if sub is not None and value is not None else value
        try:
            return cls(**kwargs)
        except (AssertionError, TypeError, ValueError) as err:
            raise ImportRefused(f"config.json: {path} is not a valid {cls.__name__}: {err}") from err

    return build(xlstm.xLSTMBlockStackConfig, data, where)


def cuda_layout_cell(vanilla_cell):
    """The CUDA backend's cell for the same config, without its kernel (the package's own option for
    converting between backends: `sLSTMCell_cuda(config, skip_backend_init=True)`), for its layout
    functions `_recurrent_kernel_int2ext` / `_bias_int2ext` (xlstm/blocks/slstm/cell.py)."""
    from xlstm.blocks.slstm.cell import sLSTMCell_cuda

    config = copy.deepcopy(vanilla_cell.config)
    config.backend = "cuda"
    return sLSTMCell_cuda(config, skip_backend_init=True)


def slstm_cuda_to_vanilla(vanilla_cell, cuda_cell, kernel, bias):
    """CUDA-internal recurrent kernel and bias -> the package's external format -> vanilla-internal."""
    return (
        vanilla_cell._recurrent_kernel_ext2int(cuda_cell._recurrent_kernel_int2ext(kernel)).contiguous(),
        vanilla_cell._bias_ext2int(cuda_cell._bias_int2ext(bias)).contiguous(),
    )
