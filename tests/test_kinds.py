"""Policy kinds: the stored config layouts load, the registries are what the CLI offers, every trainer
argument is documented, and a new kind is one module plus one registry line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from policyrt.cli import build_parser
from policyrt.policies.kinds import (
    IMPORTERS,
    KINDS,
    REFERENCES,
    config_class,
    policy_class,
    train_args_classes,
)

BUNDLES = sorted((Path(__file__).parent.parent / "bundles").glob("*.policy"))


def stored_configs():
    """(where, kind, config dict) of every shipped manifest and the checkpoint inside its bundle."""
    for bundle in BUNDLES:
        policy = json.loads((bundle / "manifest.json").read_text())["policy"]
        yield f"{bundle.name}/manifest.json", policy["kind"], policy["config"]
        doc = json.loads((bundle / "reference" / "config.json").read_text())
        yield f"{bundle.name}/reference/config.json", doc["kind"], doc["config"]


@pytest.mark.parametrize("where, kind, stored", list(stored_configs()), ids=lambda v: v if isinstance(v, str) else "")
def test_shipped_configs_load_and_write_back_the_same_values(where, kind, stored):
    config = config_class(kind).from_dict(stored)
    assert config.kind == kind
    assert json.loads(json.dumps(config.to_dict())) == stored, where


def test_both_kinds_are_shipped():
    assert {kind for _, kind, _ in stored_configs()} == set(KINDS)


def test_a_layout_from_before_newer_fields_loads_with_their_defaults():
    """xLSTM configs written before slstm_block / proj_bias / action_squash existed (their keys absent)."""
    _, _, stored = next(s for s in stored_configs() if s[1] == "xlstm")
    old = {k: v for k, v in stored.items() if k not in ("slstm_block", "proj_bias", "action_squash")}
    config = config_class("xlstm").from_dict(old)
    assert (config.slstm_block, config.proj_bias, config.action_squash) == (None, False, "tanh")
    assert config.slstm_spec.num_heads == config.num_heads  # the old layout's sLSTM blocks: the flat fields


def test_unknown_fields_and_a_foreign_kind_are_refused_by_name():
    _, _, stored = next(s for s in stored_configs() if s[1] == "dt")
    with pytest.raises(ValueError, match="unknown dt policy config field.*: wte_size"):
        config_class("dt").from_dict({**stored, "wte_size": 3})
    with pytest.raises(ValueError, match="unknown xlstm policy config field.*hidden_size"):
        config_class("xlstm").from_dict(stored)
    with pytest.raises(ValueError, match="kind 'xlstm' does not match DTPolicyConfig"):
        config_class("dt").from_dict({**stored, "kind": "xlstm"})
    with pytest.raises(ValueError, match=r"unsupported policy kind 'mamba' \(supported: xlstm, dt\)"):
        config_class("mamba")


def test_lists_come_back_as_tuples_and_nested_specs_as_dataclasses():
    from policyrt.policies.xlstm_config import FeedForwardSpec, SLSTMBlockSpec

    config = config_class("xlstm")(obs_dim=2, act_dim=1, action_low=(-1.0,), action_high=(1.0,), num_blocks=2,
                                   slstm_at=(1,), slstm_block=SLSTMBlockSpec(feedforward=FeedForwardSpec(act_fn="relu")))
    again = config_class("xlstm").from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and isinstance(again.slstm_at, tuple)
    with pytest.raises(ValueError, match=r"unknown slstm_block\.feedforward field.*: gate"):
        config_class("xlstm").from_dict({**config.to_dict(), "slstm_block": {"feedforward": {"gate": 1}}})


def test_the_cli_offers_what_the_registries_hold(monkeypatch):
    """A kind, an importer or a reference is one registry line: the CLI's choices follow."""
    monkeypatch.setitem(KINDS, "dt-copy", KINDS["dt"])
    monkeypatch.setitem(IMPORTERS, "hf-dt-copy", IMPORTERS["hf-dt"])
    monkeypatch.setitem(REFERENCES, "hf-dt-copy", REFERENCES["hf-dt"])
    parser = build_parser()
    args = parser.parse_args(["train", "dt-copy", "--data", "d", "--out", "o", "--context", "7"])
    assert (args.context, args.steps, args.args_class) == (7, 2500, train_args_classes()["dt"])
    assert parser.parse_args(["export", "src", "--from", "hf-dt-copy", "--out", "x"]).source_format == "hf-dt-copy"
    assert parser.parse_args(["compare", "b", "--reference", "r", "--from", "hf-dt-copy"]).reference_kind == "hf-dt-copy"
    for words in (["export", "src", "--from", "onnx", "--out", "x"], ["compare", "b", "--reference", "r", "--from", "onnx"],
                  ["train", "mamba", "--data", "d", "--out", "o"]):
        with pytest.raises(SystemExit):
            parser.parse_args(words)


def test_every_trainer_argument_has_help_and_its_own_defaults():
    from policyrt.commands.train import _arg_docs

    for kind, args_class in train_args_classes().items():
        docs = _arg_docs(args_class)
        for field in dataclasses.fields(args_class):
            assert docs.get(field.name), f"{kind}: field {field.name} has no docstring (its --help)"
            if field.name not in ("data", "out"):
                assert field.default is not dataclasses.MISSING, f"{kind}: {field.name} has no default"
        assert args_class.help and args_class.__doc__


def test_labels_outside_the_choices_are_refused_by_argparse(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "xlstm", "--data", "d", "--out", "o", "--labels", "clean"])
    assert "invalid choice: 'clean' (choose from" in capsys.readouterr().err


def test_unknown_names_are_refused_with_what_is_supported(tmp_path):
    pytest.importorskip("safetensors")
    from policyrt.policies.checkpoint import load_checkpoint
    from policyrt.policies.importers import ImportRefused, run_importer
    from policyrt.policies.references import make_reference

    (tmp_path / "config.json").write_text(json.dumps({"kind": "mamba", "config": {}}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"config.json: unsupported policy kind 'mamba' \(supported: xlstm, dt\)"):
        load_checkpoint(tmp_path)
    with pytest.raises(ImportRefused, match="unknown --from 'onnx'; available: hf-dt, dt-original, xlstm-stack"):
        run_importer("onnx", tmp_path, {})
    with pytest.raises(ValueError, match=r"unsupported reference kind 'onnx' \(supported: checkpoint, hf-dt"):
        make_reference("onnx", tmp_path, None)


def toy_kind_module():
    """A whole policy kind in one module: config, policy and step form (a linear policy with a step counter)."""
    import types

    import torch
    from torch import nn

    from policyrt.contract import StateTensor
    from policyrt.policies.policy_buffers import register_config_buffers
    from policyrt.policies.policy_config import PolicyConfig
    from policyrt.policies.step_contract import initial_states

    @dataclasses.dataclass(frozen=True)
    class ToyConfig(PolicyConfig):
        kind: str = "toy"
        gain: float = 0.5
        """How much of the previous action is fed back."""

    class ToyPolicy(nn.Module):
        def __init__(self, config: ToyConfig):
            super().__init__()
            self.config = config
            self.head = nn.Linear(config.obs_dim + 2, config.act_dim)
            register_config_buffers(self, config)

    class ToyStep(nn.Module):
        def __init__(self, policy: ToyPolicy):
            super().__init__()
            self.policy, self.specs = policy, [StateTensor("count", (1,))]

        def initial_states(self, batch: int):
            return initial_states(self.specs, batch)

        def forward(self, obs, prev_action, reward, target_return, reset, count):
            p, keep = self.policy, (~reset).to(obs.dtype).unsqueeze(-1)
            x = torch.cat([(obs - p.obs_mean) / p.obs_std, reward.unsqueeze(-1), target_return.unsqueeze(-1)], -1)
            raw = torch.tanh(p.head(x) + p.config.gain * keep * prev_action)
            return p.act_center + p.act_half_range * raw, keep * count + 1.0

    module = types.ModuleType("policyrt.policies.toy_kind")
    module.ToyConfig, module.ToyPolicy, module.ToyStep = ToyConfig, ToyPolicy, ToyStep
    return module


def test_a_new_kind_is_one_module_and_one_registry_line(tmp_path, monkeypatch):
    """Checkpoint, export with its parity check, and the runtime need nothing else from a kind."""
    import sys

    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from policyrt.export.bundle_export import export_bundle
    from policyrt.policies.checkpoint import load_checkpoint, save_checkpoint
    from policyrt.policies.kinds import PolicyKind
    from policyrt.runtime import load

    monkeypatch.setitem(sys.modules, "policyrt.policies.toy_kind", toy_kind_module())
    monkeypatch.setitem(KINDS, "toy", PolicyKind("toy_kind:ToyConfig", "toy_kind:ToyPolicy", "toy_kind:ToyStep"))
    config = config_class("toy")(obs_dim=3, act_dim=2, action_low=(-2.0, -1.0), action_high=(2.0, 1.0),
                                 obs_mean=(0.1, 0.2, 0.3), obs_std=(1.0, 2.0, 3.0), target_return=5.0)
    save_checkpoint(policy_class("toy")(config), tmp_path / "ckpt")
    policy, doc = load_checkpoint(tmp_path / "ckpt")
    assert policy.config == config and doc["kind"] == "toy"
    bundle = export_bundle(tmp_path / "ckpt", tmp_path / "toy.policy", progress=lambda *_: None)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["policy"]["kind"] == "toy" and [s["name"] for s in manifest["state"]] == ["count"]
    assert manifest["parity"]["onnxruntime"]["action_max_abs"] <= 1e-5
    session = load(bundle, backend="onnxruntime")
    action = session.step([0.0, 0.0, 0.0], 0.0)
    assert action.shape == (2,) and abs(action[0]) <= 2.0 and abs(action[1]) <= 1.0
    assert "toy" not in train_args_classes()  # a kind without a trainer is not offered by `policyrt train`
