"""Policy checkpoints: a directory with `config.json` (kind + config) and `model.safetensors`."""

from __future__ import annotations

import json
from pathlib import Path


def save_checkpoint(policy, out: Path, extra: dict | None = None) -> Path:
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in policy.state_dict().items()}
    # Temporary names + rename: an interrupted save never leaves a half-written checkpoint.
    save_file(state, str(out / "model.tmp.safetensors"))
    (out / "model.tmp.safetensors").replace(out / "model.safetensors")
    doc = {"kind": policy.config.kind, "config": policy.config.to_dict(), **(extra or {})}
    (out / "config.tmp.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "config.tmp.json").replace(out / "config.json")
    return out


def load_checkpoint(path: Path):
    """Returns (policy in eval mode, the config.json document)."""
    from safetensors.torch import load_file

    path = Path(path)
    for name in ("config.json", "model.safetensors"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"checkpoint {path} has no {name}")
    doc = json.loads((path / "config.json").read_text())
    from .kinds import config_class, policy_class

    try:
        config = config_class(doc.get("kind")).from_dict(doc["config"])
    except ValueError as err:
        raise ValueError(f"{path}/config.json: {err}") from err
    policy = policy_class(config.kind)(config)
    state = load_file(str(path / "model.safetensors"))
    missing, unexpected = policy.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}/model.safetensors does not match its config: missing {missing}, unexpected {unexpected}")
    return policy.eval(), doc
