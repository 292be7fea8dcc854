"""Decision Transformer: Hugging Face and original-layout imports reproduce the source model step by step."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import policyrt  # noqa: E402
from policyrt.cli import main  # noqa: E402
from policyrt.policies.dt_reference import ReferenceDT  # noqa: E402

OBS, ACT, K, MAX_EP = 3, 2, 6, 120


def hf_model(seed=0, **overrides):
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    torch.manual_seed(seed)
    settings = dict(state_dim=OBS, act_dim=ACT, hidden_size=32, n_layer=2, n_head=2, max_ep_len=MAX_EP,
                    activation_function="gelu_new")
    settings.update(overrides)
    model = DecisionTransformerModel(DecisionTransformerConfig(**settings)).eval()
    with torch.no_grad():  # move embeddings and LayerNorms off their init so every parameter matters
        for name, param in model.named_parameters():
            if "ln" in name or "embed" in name or "wpe" in name:
                param.add_(0.2 * torch.randn_like(param))
    return model


@pytest.fixture(scope="module")
def stats():
    return np.array([0.1, -0.2, 0.3], np.float32), np.array([1.0, 2.0, 0.5], np.float32)


@pytest.fixture(scope="module")
def hf_bundle(tmp_path_factory, stats):
    work = tmp_path_factory.mktemp("hf")
    model = hf_model()
    model.save_pretrained(work / "model")
    np.save(work / "mean.npy", stats[0])
    np.save(work / "std.npy", stats[1])
    out = work / "hf.policy"
    code = main(["export", "--from", "hf-dt", str(work / "model"), "--context", str(K), "--return-scale", "10",
                 "--target-return", "40", "--obs-mean", str(work / "mean.npy"), "--obs-std", str(work / "std.npy"),
                 "--out", str(out)])
    assert code == 0
    return model, out


def closed_rollout(session, reference, steps, resets, rng, target=40.0):
    """Drive bundle and reference with the same inputs (prev_action = the bundle's noisy applied action)."""
    worst, prev, reward = 0.0, np.zeros(ACT, np.float32), 0.0
    for t in range(steps):
        if t in resets:
            session.reset()
            reference.reset(target)
            prev, reward = np.zeros(ACT, np.float32), 0.0
        obs = rng.standard_normal(OBS).astype(np.float32)
        got = session.step(obs, reward, prev_action=prev)
        want = reference.act(obs, reward, prev)
        worst = max(worst, float(np.abs(got - want).max()))
        prev = (got + 0.1 * rng.standard_normal(ACT)).astype(np.float32)
        reward = float(rng.uniform(0, 1))
    return worst


def test_hf_import_equals_hf_forward_for_1000_steps_with_resets(hf_bundle, stats):
    model, bundle = hf_bundle
    reference = ReferenceDT(model, OBS, ACT, K, 10.0, MAX_EP, *stats)
    session = policyrt.load(bundle)
    # episodes of 3, 250, 300 (past max_ep_len: clamped timesteps) and 447 steps
    worst = closed_rollout(session, reference, 1000, {0, 3, 253, 553}, np.random.default_rng(0))
    assert worst <= 1e-5


def test_hf_import_records_what_it_assumed(hf_bundle):
    _, bundle = hf_bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    imported = manifest["import"]
    assert imported["from"] == "hf-dt" and imported["context"] == K and imported["return_scale"] == 10.0
    assert imported["ignored_keys"] == ["encoder.wte.weight"]
    assert "action_bounds" in imported["assumed"]
    assert manifest["policy"]["kind"] == "dt" and manifest["provenance"]["commands"][-1].startswith("policyrt export --from hf-dt")
    by_name = {s["name"]: s for s in manifest["state"]}
    assert by_name["timestep"]["dtype"] == "int32" and by_name["obs"]["shape"] == [K, OBS]


def original_state_dict(model) -> dict:
    """The same weights in the original DT repository's layout: transformer.*, no wpe, mask buffers."""
    state = {}
    for key, value in model.state_dict().items():
        if key == "encoder.wpe.weight":
            continue
        state[key.replace("encoder.", "transformer.", 1)] = value
    for layer in range(model.config.n_layer):
        state[f"transformer.h.{layer}.attn.bias"] = torch.ones(1, 1, 1024, 1024).tril()
        state[f"transformer.h.{layer}.attn.masked_bias"] = torch.tensor(-1e4)
    return state


def test_dt_original_import_equals_the_model_without_position_embeddings(tmp_path):
    model = hf_model(seed=1, activation_function="relu")
    torch.save(original_state_dict(model), tmp_path / "dt.pt")
    with torch.no_grad():
        model.encoder.wpe.weight.zero_()  # the original has no position embedding
    out = tmp_path / "orig.policy"
    assert main(["export", "--from", "dt-original", str(tmp_path / "dt.pt"), "--n-head", "2", "--context", str(K),
                 "--return-scale", "10", "--target-return", "40", "--out", str(out)]) == 0
    reference = ReferenceDT(model, OBS, ACT, K, 10.0, MAX_EP)
    worst = closed_rollout(policyrt.load(out), reference, 300, {0, 150}, np.random.default_rng(1))
    assert worst <= 1e-5
    ignored = json.loads((out / "manifest.json").read_text())["import"]["ignored_keys"]
    assert "transformer.wte.weight" in ignored and "transformer.h.0.attn.bias" in ignored


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda args: args.remove("--context") or args.remove(str(K)), "--context is required"),
        (lambda args: args.extend(["--action-low", "-1", "--action-high", "1"]), "--action-low has 1 entries, the model's act_dim is 2"),
    ],
)
def test_hf_import_refuses_what_it_cannot_infer(tmp_path, capsys, change, message):
    hf_model().save_pretrained(tmp_path / "model")
    args = ["export", "--from", "hf-dt", str(tmp_path / "model"), "--context", str(K), "--return-scale", "10",
            "--target-return", "40", "--out", str(tmp_path / "x.policy")]
    change(args)
    assert main(args) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.policy").exists()


def test_shape_disagreement_names_both_shapes(tmp_path):
    from policyrt.policies.dt_import import import_hf_dt
    from policyrt.policies.importers import ImportRefused

    model = hf_model()
    model.save_pretrained(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    config["n_inner"] = 64  # the saved MLP is 4 * 32 = 128 wide
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    options = {"context": K, "return_scale": 10.0, "target_return": 40.0}
    with pytest.raises(ImportRefused, match=r"mlp.c_fc.weight has shape \(32, 128\) in the checkpoint, the config implies \(32, 64\)"):
        import_hf_dt(tmp_path / "model", options)


def test_unused_parameter_is_an_error_not_dropped(tmp_path):
    from policyrt.policies.dt_import import import_dt_original
    from policyrt.policies.importers import ImportRefused

    state = original_state_dict(hf_model())
    state["predict_reward.weight"] = torch.zeros(1, 32)
    torch.save(state, tmp_path / "dt.pt")
    with pytest.raises(ImportRefused, match=r"unused \['predict_reward.weight'\]"):
        import_dt_original(tmp_path / "dt.pt", {"context": K, "return_scale": 10.0, "target_return": 40.0, "n_head": 2})


def test_unsupported_activation_is_named(tmp_path):
    from policyrt.policies.dt_import import import_hf_dt
    from policyrt.policies.importers import ImportRefused

    hf_model(activation_function="silu").save_pretrained(tmp_path / "model")
    with pytest.raises(ImportRefused, match="activation_function 'silu' not supported"):
        import_hf_dt(tmp_path / "model", {"context": K, "return_scale": 10.0, "target_return": 40.0})


def test_native_dt_with_context_1_exports_and_passes_parity(tmp_path):
    """K=1: the window is the new step alone, state.action is never read, and the exporter used to drop it."""
    from conftest import tiny_dt_policy

    from policyrt.export.bundle_export import export_policy

    policy = tiny_dt_policy(context=1)
    doc = {"kind": "dt", "config": policy.config.to_dict(), "commands": ["(test: random weights, K=1)"]}
    out = export_policy(policy, doc, tmp_path / "random", tmp_path / "k1.policy", progress=lambda *_: None)
    manifest = json.loads((out / "manifest.json").read_text())
    assert {s["name"]: s["shape"] for s in manifest["state"]}["action"] == [1, 2]
    assert manifest["parity"]["onnxruntime"]["action_max_abs"] <= 1e-5


def test_hf_import_with_context_1_equals_hf_forward(tmp_path, stats):
    model = hf_model(seed=2)
    model.save_pretrained(tmp_path / "model")
    np.save(tmp_path / "mean.npy", stats[0])
    np.save(tmp_path / "std.npy", stats[1])
    out = tmp_path / "k1.policy"
    assert main(["export", "--from", "hf-dt", str(tmp_path / "model"), "--context", "1", "--return-scale", "10",
                 "--target-return", "40", "--obs-mean", str(tmp_path / "mean.npy"), "--obs-std",
                 str(tmp_path / "std.npy"), "--out", str(out)]) == 0
    reference = ReferenceDT(model, OBS, ACT, 1, 10.0, MAX_EP, *stats)
    worst = closed_rollout(policyrt.load(out), reference, 200, {0, 90}, np.random.default_rng(2))
    assert worst <= 1e-5
