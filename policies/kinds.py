"""Policy kinds by name: the policy class, its config class and its export step form.

Everything that turns a checkpoint into a step module (export, the torch backend, benchmarks) goes
through here, so a new kind is added in one place. Classes are imported on demand.
"""

from __future__ import annotations

import importlib

# kind -> role -> "module:attribute" inside policyrt.policies
KINDS = {
    "xlstm": {
        "policy": "xlstm_policy:XLSTMPolicy",
        "config": "xlstm_config:XLSTMPolicyConfig",
        "step": "xlstm_step:XLSTMStep",
    },
    "dt": {
        "policy": "dt_policy:DTPolicy",
        "config": "dt_config:DTPolicyConfig",
        "step": "dt_step:DTStep",
    },
}


def _attr(kind: str, role: str):
    if kind not in KINDS:
        raise ValueError(f"unsupported policy kind {kind!r} (supported: {', '.join(KINDS)})")
    module, name = KINDS[kind][role].split(":")
    return getattr(importlib.import_module(f"policyrt.policies.{module}"), name)


def policy_class(kind: str):
    return _attr(kind, "policy")


def config_class(kind: str):
    return _attr(kind, "config")


def make_step(policy):
    """The export-friendly step module of `policy` (eval mode), whatever its kind."""
    return _attr(policy.config.kind, "step")(policy).eval()
