"""The name registries of policyrt's policies, one per role; the CLI's choices come from them.

- `KINDS`: a policy kind (the `kind` of a checkpoint's config.json and a bundle manifest) -> its parts:
  config (a `PolicyConfig`), the PyTorch policy, the export step form, and the trainer's arguments (a
  `TrainArgs`, None for a kind that is only imported). `policyrt train` offers every kind with a trainer.
- `IMPORTERS`: `policyrt export --from NAME` -> the importer of a policy trained elsewhere (importers.py).
- `REFERENCES`: `policyrt compare --from NAME` -> what rebuilds the original model (references.py).

Every entry is "module:attribute" inside policyrt.policies, imported only when used: this module is
standard library only, so the CLI reads the names without loading torch. A new kind is its own
modules plus one `KINDS` line (and one line in the other registries for an importer or a reference).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class PolicyKind:
    config: str
    """The frozen config dataclass (a policy_config.PolicyConfig) whose `kind` default is the kind's name."""
    policy: str
    """The PyTorch policy: `Policy(config)`, its state_dict is the checkpoint's model.safetensors."""
    step: str
    """The export step form: `Step(policy)`, with the graph inputs and state of policyrt.contract."""
    train_args: str | None = None
    """The trainer's arguments (a training_loop.TrainArgs, whose `run` trains); None: import only."""


KINDS = {
    "xlstm": PolicyKind("xlstm_config:XLSTMPolicyConfig", "xlstm_policy:XLSTMPolicy", "xlstm_step:XLSTMStep",
                        "train_xlstm:TrainXLSTMArgs"),
    "dt": PolicyKind("dt_config:DTPolicyConfig", "dt_policy:DTPolicy", "dt_step:DTStep", "train_dt:TrainDTArgs"),
}

IMPORTERS = {
    "hf-dt": "dt_import:import_hf_dt",
    "dt-original": "dt_import:import_dt_original",
    "xlstm-stack": "xlstm_import:import_xlstm_stack",
}

REFERENCES = {
    "checkpoint": "references:checkpoint_reference",
    "hf-dt": "dt_reference:hf_dt_reference",
    "dt-original": "dt_reference:dt_original_reference",
    "xlstm-stack": "xlstm_reference:package_reference",
}


def entry(registry: dict, name: str, what: str):
    """registry[name], or a ValueError naming `what` was asked for and what there is."""
    if name not in registry:
        raise ValueError(f"unsupported {what} {name!r} (supported: {', '.join(registry)})")
    return registry[name]


def resolve(target: str):
    """"module:attribute" inside policyrt.policies -> the attribute (the module imported now)."""
    module, name = target.split(":")
    return getattr(importlib.import_module(f"policyrt.policies.{module}"), name)


def policy_class(kind: str):
    return resolve(entry(KINDS, kind, "policy kind").policy)


def config_class(kind: str):
    return resolve(entry(KINDS, kind, "policy kind").config)


def manifest_config(manifest):
    """The policy config a bundle's manifest records (`policy.kind` and `policy.config`)."""
    return config_class(manifest.kind).from_dict(manifest.raw["policy"]["config"])


def train_args_classes() -> dict:
    """kind -> its trainer's `TrainArgs` class, for every kind that has a trainer."""
    return {kind: resolve(parts.train_args) for kind, parts in KINDS.items() if parts.train_args}


def make_step(policy):
    """The export-friendly step module of `policy` (eval mode), whatever its kind."""
    return resolve(entry(KINDS, policy.config.kind, "policy kind").step)(policy).eval()
