"""Import an `xlstm` package `xLSTMBlockStack` with its input and output projections (`--from xlstm-stack`).

The source format (docs/BUNDLE.md, "Importing", "xlstm-stack") is read by xlstm_source.py.

The stack maps onto `XLSTMPolicy` one to one: `XLSTMPolicyConfig.stack_config()` must rebuild the
source's stack config field for field, except fields listed in IGNORED_FIELDS (training, precision and
backend settings that do not change what a float32 step computes) — anything else it cannot carry is
refused, naming the field. The input projection becomes the policy's token embedding (columns of
features the source does not read are zero), the output projection its head. sLSTM weights trained
with the CUDA backend are converted through the package's external format.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from .importers import ImportRefused
from .xlstm_source import cuda_layout_cell, read_source, slstm_cuda_to_vanilla, stack_config_from_dict

OPTIONS = ("return_scale", "target_return", "obs_mean", "obs_std", "action_low", "action_high")

_PRECISION = "training precision/kernel setting: the step runs in float32 (the vanilla backend's formulation)"
# Leaf names of the package's config dataclasses whose value does not change what the float32 step
# computes, with the reason recorded in the manifest when the source's value differs from policyrt's.
IGNORED_FIELDS = {
    "backend": "sLSTM backend: weights are converted to the vanilla layout, the step form reads the external format",
    "dropout": "identity at inference",
    "bias_init": "initialization only",
    "recurrent_weight_init": "initialization only",
    "gradient_recurrent_cut": "gradient only",
    "gradient_recurrent_clipval": "gradient only (vanilla backend); refused for CUDA-trained cells",
    "forward_clipval": "read by neither backend in xlstm 2.0.6",
    "batch_size": "CUDA kernel compile-time hint",
    "internal_input_shape": "backend-internal input layout",
    "enable_automatic_mixed_precision": _PRECISION,
    **{name: _PRECISION for name in ("dtype", "dtype_b", "dtype_r", "dtype_w", "dtype_g", "dtype_s", "dtype_a")},
    "_block_idx": "derived per block by the package",
    "_num_blocks": "derived from num_blocks by the package",
}


def _diff(ours, theirs, path: str, out: list):
    """Leaf paths where two asdict() trees differ."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for key in sorted(set(ours) | set(theirs)):
            _diff(ours.get(key), theirs.get(key), f"{path}.{key}", out)
    elif _normal(ours) != _normal(theirs):
        out.append((path, theirs, ours))


def _normal(value):
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _resolve(name: str, from_source, from_option, config_file: Path):
    """A value given in config.json and/or on the command line: both must agree. -> (value, origin)."""
    flag = "--" + name.replace("_", "-")
    if from_option is not None and from_source is not None:
        a, b = np.asarray(from_source, np.float64), np.asarray(from_option, np.float64)
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-6, atol=1e-9):
            raise ImportRefused(f"{name}: {config_file} says {from_source!r}, {flag} says {list(np.atleast_1d(b))}; give one")
    if from_source is not None:
        return from_source, "config.json"
    if from_option is not None:
        return from_option, flag
    return None, None


# --- the import ----------------------------------------------------------------------------------

def import_xlstm_stack(path: Path, options: dict):
    """-> (XLSTMPolicy in eval mode, provenance document with the import assumptions)."""
    from safetensors.torch import load_file

    from .xlstm_config import FeedForwardSpec, SLSTMBlockSpec, XLSTMPolicyConfig
    from .xlstm_policy import XLSTMPolicy

    path = Path(path)
    for key, value in options.items():
        if key not in OPTIONS and value is not None:
            raise ImportRefused(f"--{key.replace('_', '-')} does not apply to --from xlstm-stack (an xLSTM has no context window)"
                                if key == "context" else f"--{key.replace('_', '-')} does not apply to --from xlstm-stack")
    source, config_file = read_source(path)
    obs_dim, act_dim, inputs = int(source["obs_dim"]), int(source["act_dim"]), list(source["inputs"])
    stack = stack_config_from_dict(source["stack"])
    slstm_cfg = stack.slstm_block.slstm if stack.slstm_block is not None and stack.slstm_at else None
    backend = slstm_cfg.backend if slstm_cfg is not None else None
    if backend is not None and backend not in ("vanilla", "cuda"):
        raise ImportRefused(f"config.json: stack.slstm_block.slstm.backend {backend!r} is not 'vanilla' or 'cuda'")
    if backend == "cuda" and slstm_cfg.gradient_recurrent_clipval is not None:
        raise ImportRefused(
            "config.json: stack.slstm_block.slstm.gradient_recurrent_clipval is set with backend 'cuda': the CUDA "
            "kernel build also clips the forward output at that value (xlstm/blocks/slstm/cell.py, "
            "sLSTMCellConfig.defines), which the step export does not reproduce"
        )

    assumed = {}
    values = {}
    for name in OPTIONS:
        values[name], origin = _resolve(name, source.get(name), options.get(name), config_file)
        if origin is not None:
            assumed[f"{name}_from"] = origin
    mean, std = values["obs_mean"], values["obs_std"]
    if (mean is None) != (std is None):
        raise ImportRefused(f"{'obs_std' if std is None else 'obs_mean'} is missing: give obs_mean and obs_std together")
    if mean is None:
        assumed["observation_normalization"] = "none given: the input projection reads observations as they are"
    low, high = values["action_low"], values["action_high"]
    if low is None or high is None:
        raise ImportRefused(
            f"action_low/action_high are required ({config_file} or --action-low/--action-high): "
            + ("the tanh output is scaled into them" if source["action_squash"] == "tanh"
               else "the controller clips to them and the bundle records them")
        )
    if len(low) == len(high) and any(float(h) <= float(lo) for lo, h in zip(low, high)):
        raise ImportRefused(f"action_low/action_high: every high must exceed its low, got {list(low)} / {list(high)}")
    if std is not None and any(float(v) <= 0.0 for v in std):
        raise ImportRefused("obs_std: every entry must be positive (observations are divided by it)")
    rtg_read = "return_to_go" in inputs
    for name in ("return_scale", "target_return"):
        if rtg_read and values[name] is None:
            raise ImportRefused(f"{name} is required ({config_file} or --{name.replace('_', '-')}): the input projection reads return_to_go")
    if not rtg_read:
        assumed["return_to_go"] = "not read by the input projection: return_scale and target_return have no effect"

    mlstm = stack.mlstm_block.mlstm if stack.mlstm_block is not None else None
    ffn = stack.slstm_block.feedforward if slstm_cfg is not None else None
    try:
        config = XLSTMPolicyConfig(
            obs_dim=obs_dim,
            act_dim=act_dim,
            action_low=tuple(float(v) for v in low),
            action_high=tuple(float(v) for v in high),
            obs_mean=() if mean is None else tuple(float(v) for v in mean),
            obs_std=() if std is None else tuple(float(v) for v in std),
            embedding_dim=stack.embedding_dim,
            num_blocks=stack.num_blocks,
            slstm_at=tuple(stack.slstm_at),
            context_length=stack.context_length,
            add_post_blocks_norm=stack.add_post_blocks_norm,
            proj_bias=stack.bias,
            **({} if mlstm is None else dict(
                num_heads=mlstm.num_heads,
                conv1d_kernel_size=mlstm.conv1d_kernel_size,
                proj_factor=mlstm.proj_factor,
                qkv_proj_blocksize=mlstm.qkv_proj_blocksize,
                round_proj_up_dim_up=mlstm.round_proj_up_dim_up,
                round_proj_up_to_multiple_of=mlstm.round_proj_up_to_multiple_of,
            )),
            slstm_block=None if slstm_cfg is None else SLSTMBlockSpec(
                num_heads=slstm_cfg.num_heads,
                conv1d_kernel_size=slstm_cfg.conv1d_kernel_size,
                group_norm_weight=slstm_cfg.group_norm_weight,
                feedforward=None if ffn is None else FeedForwardSpec(
                    proj_factor=ffn.proj_factor,
                    act_fn=ffn.act_fn,
                    bias=ffn.bias,
                    round_proj_up_dim_up=ffn.round_proj_up_dim_up,
                    round_proj_up_to_multiple_of=ffn.round_proj_up_to_multiple_of,
                ),
            ),
            return_scale=float(values["return_scale"]) if rtg_read else 1.0,
            target_return=float(values["target_return"]) if rtg_read else 0.0,
            action_squash=source["action_squash"],
        )
    except ValueError as err:
        raise ImportRefused(f"{config_file}: {err}") from err
    ignored = _check_stack_round_trip(stack, config)

    weights = load_file(str(path / "model.safetensors"))
    try:
        policy = XLSTMPolicy(config)
    except (AssertionError, AttributeError, RuntimeError, TypeError, ValueError) as err:
        raise ImportRefused(f"{config_file}: the xlstm package cannot build this stack: {err!r}") from err
    converted, dtypes = _load_weights(policy, weights, source, backend, inputs, path / "model.safetensors")
    policy.load_state_dict(converted, strict=True)
    if dtypes:
        assumed["weights_dtype"] = f"{', '.join(sorted(dtypes))} in the source, computed in float32"
    if "prev_action" in inputs:
        assumed["prev_action"] = "read in action units; folded into the embedding with the action bounds"
    doc = {
        "kind": "xlstm",
        "config": config.to_dict(),
        "import": {
            "from": "xlstm-stack",
            "source": str(path),
            "inputs": inputs,
            "action_squash": config.action_squash,
            "return_scale": config.return_scale,
            "target_return": config.target_return,
            "slstm_backend": backend,
            "slstm_layout": None if backend is None else (
                "vanilla (as stored)" if backend == "vanilla" else
                "cuda -> external (sLSTMCell_cuda int2ext) -> vanilla (sLSTMCell_vanilla ext2int)"
            ),
            "ignored_config": ignored,
            "assumed": assumed,
        },
        "commands": [],
    }
    return policy.eval(), doc


def _check_stack_round_trip(stack, config) -> dict:
    """policyrt's stack_config() must rebuild the source's stack; returns the ignored differences."""
    ours = dataclasses.asdict(config.stack_config())
    theirs = dataclasses.asdict(stack)
    # A sub-config no block uses (mlstm_block of an all-sLSTM stack, slstm_block without sLSTM blocks)
    # builds no parameters: it is not part of the policy.
    ignored = {}
    for key, used in (("mlstm_block", len(stack.slstm_at) < stack.num_blocks), ("slstm_block", bool(stack.slstm_at))):
        if not used:
            if theirs.get(key) is not None:
                ignored[f"stack.{key}"] = {"value": "(config)", "reason": "no block of the stack uses it"}
            ours.pop(key, None)
            theirs.pop(key, None)
    differences = []
    _diff(ours, theirs, "stack", differences)
    refused = []
    for field_path, value, rebuilt in differences:
        reason = IGNORED_FIELDS.get(field_path.rsplit(".", 1)[-1])
        if reason is None:
            refused.append(f"{field_path}={value!r} (policyrt would build {rebuilt!r})")
        else:
            ignored[field_path] = {"value": value, "reason": reason}
    if refused:
        raise ImportRefused("config.json: field(s) the xLSTM policy cannot represent: " + "; ".join(refused))
    return ignored


# --- weights -------------------------------------------------------------------------------------

def _source_layout(policy, backend: str | None) -> tuple[dict, dict]:
    """Expected source shapes of the backbone keys, and per CUDA-layout sLSTM cell prefix its cells."""
    expected = {f"backbone.{k}": tuple(v.shape) for k, v in policy.backbone.state_dict().items()}
    cells = {}
    for i, block in enumerate(policy.backbone.blocks):
        if block.config.slstm is None:
            continue
        prefix = f"backbone.blocks.{i}.xlstm.slstm_cell."
        vanilla = block.xlstm.slstm_cell
        cuda = cuda_layout_cell(vanilla)
        cells[prefix] = (vanilla, cuda)
        if backend == "cuda":
            expected[prefix + "_recurrent_kernel_"] = tuple(cuda._recurrent_kernel_.shape)
            expected[prefix + "_bias_"] = tuple(cuda._bias_.shape)
    return expected, cells


def _load_weights(policy, weights: dict, source: dict, backend, inputs: list, where: Path):
    """Source tensors -> the policy's state_dict: strict key and shape checks, CUDA layout converted."""
    import torch

    config = policy.config
    widths = {"obs": config.obs_dim, "prev_action": config.act_dim, "reward": 1, "return_to_go": 1}
    in_dim = sum(widths[f] for f in inputs)
    expected, cells = _source_layout(policy, backend)
    expected["input_proj.weight"] = (config.embedding_dim, in_dim)
    expected["output_proj.weight"] = (config.act_dim, config.embedding_dim)
    if source.get("input_bias", True):
        expected["input_proj.bias"] = (config.embedding_dim,)
    if source.get("output_bias", True):
        expected["output_proj.bias"] = (config.act_dim,)
    missing = sorted(set(expected) - set(weights))
    unused = sorted(set(weights) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing {missing}")
    if unused:
        problems.append(f"unused {unused}")
    for key in sorted(set(expected) & set(weights)):
        got, want = tuple(weights[key].shape), expected[key]
        if got != want:
            note = ""
            if key.endswith("_recurrent_kernel_"):
                vanilla, cuda = cells[key[: -len("_recurrent_kernel_")]]
                other = {"vanilla": tuple(cuda._recurrent_kernel_.shape), "cuda": tuple(vanilla._recurrent_kernel_.shape)}
                if got == other.get(backend or "vanilla"):
                    trained = "cuda" if backend in (None, "vanilla") else "vanilla"
                    note = (f" — that is the {trained} backend's layout: set stack.slstm_block.slstm.backend "
                            "to the backend the weights were trained with")
            problems.append(f"{key} has shape {list(got)} in the checkpoint, the config implies {list(want)}{note}")
    if problems:
        raise ImportRefused(f"{where}: parameters do not match config.json: " + "; ".join(problems))

    dtypes = {str(v.dtype).removeprefix("torch.") for v in weights.values() if v.dtype != torch.float32}
    weights = {k: v.to(torch.float32) for k, v in weights.items()}
    state = {k.removeprefix("backbone."): v for k, v in weights.items() if k.startswith("backbone.")}
    if backend == "cuda":
        for prefix, (vanilla, cuda) in cells.items():
            p = prefix.removeprefix("backbone.")
            state[p + "_recurrent_kernel_"], state[p + "_bias_"] = slstm_cuda_to_vanilla(
                vanilla, cuda, state[p + "_recurrent_kernel_"], state[p + "_bias_"]
            )
    out = {f"backbone.{k}": v for k, v in state.items()}

    # Input projection -> token embedding. The policy's token is [(obs - mean) / std, (prev_action -
    # center) / half_range, reward, rtg / return_scale]; the source reads obs normalized the same way
    # (or raw when no statistics are given), prev_action in action units: a = center + half * a_norm,
    # so its columns are scaled by half and W @ center moves into the bias. Unread features: zero columns.
    w_in = weights["input_proj.weight"]
    b_in = weights.get("input_proj.bias", torch.zeros(config.embedding_dim))
    low = torch.tensor(config.action_low, dtype=torch.float64)
    high = torch.tensor(config.action_high, dtype=torch.float64)
    embed_w = torch.zeros(config.embedding_dim, config.token_dim, dtype=torch.float64)
    embed_b = b_in.to(torch.float64).clone()
    offsets = {"obs": 0, "prev_action": config.obs_dim, "reward": config.obs_dim + config.act_dim,
               "return_to_go": config.obs_dim + config.act_dim + 1}
    col = 0
    for feature in inputs:
        width = widths[feature]
        block = w_in[:, col : col + width].to(torch.float64)
        if feature == "prev_action":
            embed_b += block @ ((high + low) / 2)
            block = block * ((high - low) / 2)
        embed_w[:, offsets[feature] : offsets[feature] + width] = block
        col += width
    out["embed.weight"] = embed_w.to(torch.float32)
    out["embed.bias"] = embed_b.to(torch.float32)
    out["head.weight"] = weights["output_proj.weight"]
    out["head.bias"] = weights.get("output_proj.bias", torch.zeros(config.act_dim))
    return out, dtypes
