"""Import Decision Transformers trained elsewhere: Hugging Face directories and original-repo state dicts.

Both layouts are the same GPT-2 + embeddings + heads, parameter for parameter, apart from naming:
- Hugging Face (`DecisionTransformerModel.save_pretrained`): `encoder.*`, a `wpe` table of which only
  row 0 is used (position ids are all zero), and an unused one-row `encoder.wte`.
- the original Decision Transformer repository: `transformer.*`, no `wpe` at all (its GPT-2 fork
  removed position embeddings), an unused `wte`, and older GPT-2 versions also saved the causal-mask
  buffers `attn.bias` / `attn.masked_bias` in the state dict.
So importing is renaming plus strict checks: every source key is used or listed as knowingly ignored,
every parameter of the policy is filled, and every shape agrees.
"""

from __future__ import annotations

import json
from pathlib import Path

from .dt_config import DTPolicyConfig
from .importers import ImportRefused

# Source keys that carry no information for a DT policy; ignoring them is recorded in the manifest.
IGNORED_SUFFIXES = (".wte.weight", ".attn.bias", ".attn.masked_bias")  # not c_attn.bias


def import_hf_dt(path: Path, options: dict):
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ImportRefused(f"{path}: no config.json (expected a DecisionTransformerModel.save_pretrained directory)")
    hf = json.loads(config_file.read_text())
    if hf.get("model_type") not in (None, "decision_transformer"):
        raise ImportRefused(f"{config_file}: model_type {hf.get('model_type')!r} is not decision_transformer")
    if hf.get("add_cross_attention"):
        raise ImportRefused(f"{config_file}: add_cross_attention=true has no meaning for a DT policy")
    weights = load_weights(path)
    fields = {
        "obs_dim": _required(hf, "state_dim", config_file),
        "act_dim": _required(hf, "act_dim", config_file),
        "hidden_size": _required(hf, "hidden_size", config_file),
        "n_layer": _required(hf, "n_layer", config_file),
        "n_head": _required(hf, "n_head", config_file),
        "n_inner": hf.get("n_inner"),
        "activation_function": hf.get("activation_function", "relu"),
        "max_ep_len": hf.get("max_ep_len", 4096),
        "layer_norm_epsilon": hf.get("layer_norm_epsilon", 1e-5),
        "scale_attn_weights": hf.get("scale_attn_weights", True),
        "scale_attn_by_inverse_layer_idx": hf.get("scale_attn_by_inverse_layer_idx", False),
        "n_positions": hf.get("n_positions", 1024),
        "action_tanh": hf.get("action_tanh", True),
        "position_bias": True,
    }
    return _build(fields, weights, prefix="encoder.", source="hf-dt", where=path, options=options)


def import_dt_original(path: Path, options: dict):
    """A state dict saved from the original repository's `DecisionTransformer` (.pt/.pth/.safetensors)."""
    weights = load_weights(path)
    prefix = "transformer."
    layers = sorted({int(k.split(".")[2]) for k in weights if k.startswith(prefix + "h.")})
    if not layers:
        raise ImportRefused(f"{path}: no 'transformer.h.N.*' keys: not an original-DT state dict")
    hidden = _shape(weights, "embed_state.weight", path)[0]
    n_head = options.get("n_head")
    if n_head is None:
        raise ImportRefused(f"{path}: --n-head is required: the head count is not stored in a state dict")
    fields = {
        "obs_dim": _shape(weights, "embed_state.weight", path)[1],
        "act_dim": _shape(weights, "embed_action.weight", path)[1],
        "hidden_size": hidden,
        "n_layer": len(layers),
        "n_head": int(n_head),
        "n_inner": _shape(weights, f"{prefix}h.0.mlp.c_fc.weight", path)[1],
        "activation_function": options.get("activation") or "relu",
        "max_ep_len": _shape(weights, "embed_timestep.weight", path)[0],
        "action_tanh": True,
        "position_bias": False,
    }
    policy, doc = _build(fields, weights, prefix=prefix, source="dt-original", where=path, options=options)
    doc["import"]["assumed"]["activation_function"] = fields["activation_function"] + (
        "" if options.get("activation") else " (the original repository's setting; override with --activation)"
    )
    return policy, doc


def _build(fields: dict, weights: dict, prefix: str, source: str, where: Path, options: dict):
    import torch

    from .dt_policy import DTPolicy

    for name in ("context", "return_scale", "target_return"):
        if options.get(name) is None:
            flag = "--" + name.replace("_", "-")
            raise ImportRefused(f"{flag} is required: a {source} checkpoint does not record the {name.replace('_', ' ')}")
    obs_dim, act_dim = fields["obs_dim"], fields["act_dim"]
    assumed = {}
    mean, std = options.get("obs_mean"), options.get("obs_std")
    for name, value in (("obs_mean", mean), ("obs_std", std)):
        if value is not None and len(value) != obs_dim:
            raise ImportRefused(f"--{name.replace('_', '-')} has {len(value)} entries, the model's state_dim is {obs_dim}")
    if mean is None or std is None:
        assumed["observation_normalization"] = "none given: observations enter the model as they are"
    low, high = options.get("action_low"), options.get("action_high")
    if low is None or high is None:
        if not fields["action_tanh"]:
            raise ImportRefused("--action-low/--action-high are required: the model has no tanh head, so its action range cannot be inferred")
        low, high = [-1.0] * act_dim, [1.0] * act_dim
        assumed["action_bounds"] = "[-1, 1]: the tanh head's range, as in the original MuJoCo evaluation"
    for name, value in (("action_low", low), ("action_high", high)):
        if len(value) != act_dim:
            raise ImportRefused(f"--{name.replace('_', '-')} has {len(value)} entries, the model's act_dim is {act_dim}")
    if fields["action_tanh"]:
        assumed["action_scaling"] = "action = center + half_range * tanh(head): identity for bounds [-1, 1]"
    assumed["timesteps"] = f"clamped to max_ep_len - 1 = {fields['max_ep_len'] - 1}"
    try:
        config = DTPolicyConfig(
            **fields,
            action_low=tuple(float(v) for v in low),
            action_high=tuple(float(v) for v in high),
            obs_mean=() if mean is None else tuple(float(v) for v in mean),
            obs_std=() if std is None else tuple(float(v) for v in std),
            context=int(options["context"]),
            return_scale=float(options["return_scale"]),
            target_return=float(options["target_return"]),
        )
    except ValueError as err:
        raise ImportRefused(f"{where}: {err}") from err
    policy = DTPolicy(config)
    ignored = sorted(k for k in weights if k.endswith(IGNORED_SUFFIXES))
    renamed = {}
    for key, tensor in weights.items():
        if key in ignored:
            continue
        renamed["encoder." + key[len(prefix):] if key.startswith(prefix) else key] = tensor
    expected = policy.state_dict()
    missing = sorted(set(expected) - set(renamed))
    unexpected = sorted(set(renamed) - set(expected))
    if missing or unexpected:
        raise ImportRefused(f"{where}: parameters do not match the config: missing {missing}, unused {unexpected}")
    for key, want in expected.items():  # the policy's own order: weights before biases, layer by layer
        tensor = renamed[key]
        if tuple(tensor.shape) != tuple(want.shape):
            raise ImportRefused(
                f"{where}: {key} has shape {tuple(tensor.shape)} in the checkpoint, the config implies {tuple(want.shape)}"
            )
    policy.load_state_dict({k: v.to(torch.float32) for k, v in renamed.items()}, strict=True)
    doc = {
        "kind": "dt",
        "config": config.to_dict(),
        "import": {
            "from": source,
            "source": str(where),
            "context": config.context,
            "return_scale": config.return_scale,
            "target_return": config.target_return,
            "ignored_keys": ignored,
            "assumed": assumed,
        },
        "commands": [],
    }
    return policy.eval(), doc


def _required(doc: dict, key: str, where: Path):
    if doc.get(key) is None:
        raise ImportRefused(f"{where}: field {key!r} is missing")
    return int(doc[key])


def _shape(weights: dict, key: str, where: Path) -> tuple[int, ...]:
    if key not in weights:
        raise ImportRefused(f"{where}: key {key!r} is missing")
    return tuple(weights[key].shape)


def load_weights(path: Path) -> dict:
    import torch

    candidates = [path] if path.is_file() else [path / "model.safetensors", path / "pytorch_model.bin"]
    for file in candidates:
        if not file.is_file():
            continue
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(file)))
        state = torch.load(file, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model_state_dict" in state:
            state = state["model_state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ImportRefused(f"{file}: not a state dict of tensors")
        return dict(state)
    raise ImportRefused(f"{path}: no weights found (model.safetensors, pytorch_model.bin, or a .pt/.pth file)")
