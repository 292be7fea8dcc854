"""`--from xlstm-stack`: xlstm package stacks (mixed mLSTM/sLSTM, vanilla or CUDA sLSTM layout) -> bundle,
checked against the package's own `xLSTMBlockStack.step` over 1000 steps with resets; bad sources refused."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("xlstm")
pytest.importorskip("onnxruntime")

from policyrt.policies.importers import ImportRefused  # noqa: E402
from policyrt.policies.xlstm_import import import_xlstm_stack  # noqa: E402
from policyrt.policies.xlstm_reference import PackageStackReference  # noqa: E402

NO_OPTIONS = {k: None for k in ("context", "return_scale", "target_return", "obs_mean", "obs_std", "action_low", "action_high")}


# --- the CUDA backend's sLSTM layout, restated from the package source ----------------------------
# xlstm 2.0.6, xlstm/blocks/slstm/cell.py, class sLSTMCell_cuda: `_recurrent_kernel_ext2int`,
# `_recurrent_kernel_int2ext`, `_bias_ext2int`, `_bias_int2ext`. External formats (backend-independent):
# recurrent kernel [NH, DH_in, G, DH_out], bias [NH, G, DH]. Written out here, independent of the
# importer, so the tests build CUDA-trained checkpoints without a GPU and check the importer's conversion.

def cuda_recurrent_kernel_ext2int(ext, num_heads, head_dim, num_gates=4):
    return ext.reshape(num_heads, head_dim, num_gates, head_dim).reshape(num_heads, head_dim, num_gates * head_dim)


def cuda_recurrent_kernel_int2ext(internal, num_heads, head_dim, num_gates=4):
    return internal.reshape(num_heads, head_dim, num_gates, head_dim)


def cuda_bias_ext2int(ext, num_heads, head_dim, num_gates=4):
    return ext.reshape(num_heads, num_gates, head_dim).permute(0, 1, 2).reshape(-1)


def cuda_bias_int2ext(internal, num_heads, head_dim, num_gates=4):
    return internal.reshape(num_heads, num_gates, head_dim)


# --- building sources --------------------------------------------------------------------------------

def stack_config(kind: str):
    """Stack configs in the package's own dataclasses (any mix the package allows)."""
    from xlstm import (
        FeedForwardConfig,
        mLSTMBlockConfig,
        mLSTMLayerConfig,
        sLSTMBlockConfig,
        sLSTMLayerConfig,
        xLSTMBlockStackConfig,
    )

    if kind == "mixed":  # mLSTM (2 heads, kernel 4, pf 2) + sLSTM (4 heads, kernel 2, gated ffn)
        return xLSTMBlockStackConfig(
            mlstm_block=mLSTMBlockConfig(mlstm=mLSTMLayerConfig(num_heads=2, conv1d_kernel_size=4, proj_factor=2.0)),
            slstm_block=sLSTMBlockConfig(
                slstm=sLSTMLayerConfig(backend="vanilla", num_heads=4, conv1d_kernel_size=2),
                feedforward=FeedForwardConfig(proj_factor=1.3, act_fn="gelu"),
            ),
            num_blocks=3, embedding_dim=32, slstm_at=[1], context_length=64,
        )
    if kind == "cuda-trained":  # sLSTM first (2 heads, no conv, swish ffn), mLSTM (4 heads, kernel 3, pf 1.5, biases)
        return xLSTMBlockStackConfig(
            mlstm_block=mLSTMBlockConfig(mlstm=mLSTMLayerConfig(num_heads=4, conv1d_kernel_size=3, proj_factor=1.5,
                                                               qkv_proj_blocksize=8)),
            slstm_block=sLSTMBlockConfig(
                slstm=sLSTMLayerConfig(backend="cuda", num_heads=2, conv1d_kernel_size=0, dtype="float32"),
                feedforward=FeedForwardConfig(proj_factor=2.0, act_fn="swish", bias=True),
            ),
            num_blocks=3, embedding_dim=32, slstm_at=[0, 2], context_length=64, bias=True, add_post_blocks_norm=False,
        )
    raise ValueError(kind)


def vanilla(config):
    config = copy.deepcopy(config)
    if config.slstm_block is not None:
        config.slstm_block.slstm.backend = "vanilla"
    return config


def random_stack(config, seed: int):
    """The package's stack (vanilla backend, runnable here) with every parameter perturbed, so that
    recurrent kernels, biases and norms all matter."""
    from xlstm import xLSTMBlockStack

    torch.manual_seed(seed)
    stack = xLSTMBlockStack(vanilla(config)).eval()
    with torch.no_grad():
        for name, param in stack.named_parameters():
            scale = 0.3 if ("gate" in name or "norm" in name or "slstm_cell" in name or "skip" in name or "bias" in name) else 0.05
            param.add_(scale * torch.randn_like(param))
    return stack


def to_cuda_layout(stack, state: dict) -> dict:
    """The stack's state_dict as the CUDA backend would store it: through the external format."""
    state = dict(state)
    for i, block in enumerate(stack.blocks):
        if block.config.slstm is None:
            continue
        cell = block.xlstm.slstm_cell
        nh, dh = cell.config.num_heads, cell.config.head_dim
        p = f"blocks.{i}.xlstm.slstm_cell."
        state[p + "_recurrent_kernel_"] = cuda_recurrent_kernel_ext2int(cell.recurrent_kernel.clone(), nh, dh).contiguous()
        state[p + "_bias_"] = cuda_bias_ext2int(cell.bias.clone(), nh, dh).contiguous()
    return state


WIDTHS = {"obs": 4, "prev_action": 2, "reward": 1, "return_to_go": 1}


def write_source(out, config, stack, inputs, squash="tanh", layout="vanilla", seed=0, **fields):
    """A directory in the xlstm-stack source format (docs/BUNDLE.md, "Importing")."""
    from safetensors.torch import save_file
    from torch import nn

    torch.manual_seed(seed + 100)
    input_proj = nn.Linear(sum(WIDTHS[f] for f in inputs), 32)
    output_proj = nn.Linear(32, 2)
    state = stack.state_dict()
    if layout == "cuda":
        state = to_cuda_layout(stack, state)
    weights = {f"backbone.{k}": v.contiguous() for k, v in state.items()}
    weights.update({f"input_proj.{k}": v for k, v in input_proj.state_dict().items()})
    weights.update({f"output_proj.{k}": v for k, v in output_proj.state_dict().items()})
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / "model.safetensors"))
    doc = {
        "format": 1, "stack": dataclasses.asdict(config), "obs_dim": 4, "act_dim": 2, "inputs": list(inputs),
        "action_squash": squash, "action_low": [-2.0, -1.0], "action_high": [1.0, 3.0],
        "obs_mean": [0.1, -0.2, 0.3, 0.0], "obs_std": [1.0, 2.0, 0.5, 1.5],
        "return_scale": 10.0, "target_return": 50.0, **fields,
    }
    (out / "config.json").write_text(json.dumps(doc, indent=1))
    reference = PackageStackReference(
        stack, input_proj, output_proj, inputs, obs_mean=doc["obs_mean"], obs_std=doc["obs_std"],
        action_low=doc["action_low"], action_high=doc["action_high"], action_squash=squash,
        return_scale=doc["return_scale"],
    )
    return out, reference


CASES = {
    "mlstm+slstm(ffn), vanilla, all inputs, tanh": dict(
        kind="mixed", inputs=("obs", "prev_action", "reward", "return_to_go"), squash="tanh", layout="vanilla"),
    "slstm+mlstm+slstm, CUDA layout, inputs reordered/subset, linear head": dict(
        kind="cuda-trained", inputs=("prev_action", "obs", "return_to_go"), squash="none", layout="cuda"),
}


# Seeds of the cases the tests export: the export's parity check holds ONNX Runtime to 1e-5 of the exact
# (float64) step, so a test about something else needs a case whose fp32 error stays far below that.
# Random stacks can sit at the limit: the CUDA-layout case of seed 9 has a quiet mLSTM head at parity
# step 224 (its per-head output LayerNorm sees variance 2.7e-6 under eps 1e-5: gain ~280), so any fp32
# implementation lands ~1e-5 from the exact step there and the verdict follows the CPU's kernels. Seeds 0
# (the fixture), 5 and 7 stay <= 2.1e-6 there (x86, torch dispatching AVX-512 or AVX2, which also moves the
# package's sLSTM bias init by an ulp and so builds a slightly different case).
def make_case(tmp_path, name, seed=0):
    case = CASES[name]
    config = stack_config(case["kind"])
    stack = random_stack(config, seed)
    return write_source(tmp_path / "source", config, stack, case["inputs"], case["squash"], case["layout"], seed)


# --- rollouts ------------------------------------------------------------------------------------------

STEPS = 1000
RESETS = {0: (0, 400, 750), 1: (0, 250, 750)}  # each slot on its own, then both at once
TARGETS = (50.0, 35.0)


def rollout_inputs(seed: int = 3):
    rng = np.random.default_rng(seed)
    walk = np.zeros((2, 4))
    obs = np.zeros((STEPS, 2, 4), np.float32)
    for t in range(STEPS):
        walk = 0.95 * walk + 0.3 * rng.standard_normal(walk.shape)
        obs[t] = walk * np.array([1.0, 2.0, 0.5, 1.5]) + np.array([0.1, -0.2, 0.3, 0.0])
    reward = rng.uniform(0.0, 0.1, (STEPS, 2)).astype(np.float32)
    return obs, reward


def package_states(reference) -> dict:
    """The package's step state of one slot, in the bundle's state names and shapes (batch 1)."""
    out = {}
    for i, block in enumerate(reference.stack.blocks):
        s = reference.state[f"block_{i}"]
        if block.config.slstm is not None:
            for k, key in enumerate("hcnm"):
                out[f"block{i}.{key}"] = s["slstm_state"][k, 0]
            if "conv_state" in s and s["conv_state"] is not None and block.xlstm.config.conv1d_kernel_size > 0:
                out[f"block{i}.conv"] = s["conv_state"][0][0]
        else:
            c, n, m = s["mlstm_state"]
            out[f"block{i}.C"], out[f"block{i}.n"], out[f"block{i}.m"] = c[0], n[0, ..., 0], m[0, :, 0, 0]
            out[f"block{i}.conv"] = s["conv_state"][0][0]
    return {k: v.numpy() for k, v in out.items()}


def run_against_package(session, references, check_states_every=100):
    """Step the bundle (2 slots) and one fresh-per-episode package reference per slot; returns the
    worst action error and the worst state error relative to max(1, max |tensor|)."""
    obs, reward = rollout_inputs()
    last = np.zeros((2, 2), np.float32)
    action_err = state_err = 0.0
    for t in range(STEPS):
        mask = np.array([t in RESETS[slot] for slot in (0, 1)])
        if mask.any():
            session.set_target_return(np.array(TARGETS, np.float32)[mask], mask)
            session.reset(mask)
            for slot in np.flatnonzero(mask):
                references[slot].reset(TARGETS[slot])
                last[slot] = 0.0
        expected = np.stack([references[s].act(obs[t, s], reward[t, s], last[s]) for s in (0, 1)])
        got = session.step(obs[t], reward=reward[t], prev_action=last)
        action_err = max(action_err, float(np.abs(got - expected).max()))
        last = expected.astype(np.float32)
        if t % check_states_every == check_states_every - 1:
            ours = session.state()
            for slot in (0, 1):
                for key, theirs in package_states(references[slot]).items():
                    # scaled by the tensor's size, as the export's parity check does (c and n grow to
                    # hundreds; c is judged against that scale, which is what h = o * c / n sees)
                    diff = np.abs(ours[key][slot] - theirs).max() / max(1.0, float(np.abs(theirs).max()))
                    state_err = max(state_err, float(diff))
    return action_err, state_err


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory):
    """(case name, source dir, package reference, bundle) — each case imported and exported once."""
    from policyrt.export.bundle_export import export_policy

    tmp = tmp_path_factory.mktemp("xlstm-import")
    source, reference = make_case(tmp, request.param)
    policy, doc = import_xlstm_stack(source, dict(NO_OPTIONS))
    bundle = export_policy(policy, doc, source, tmp / "stack.policy", progress=lambda *_: None)
    return request.param, source, reference, bundle


def test_bundle_equals_the_packages_step_over_1000_steps_with_resets(exported):
    import policyrt

    name, _, reference, bundle = exported
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["import"]["from"] == "xlstm-stack"
    assert manifest["import"]["slstm_backend"] == CASES[name]["layout"]
    names = {s["name"] for s in manifest["state"]}
    slstm = [i for i, block in enumerate(reference.stack.blocks) if block.config.slstm is not None]
    assert all({f"block{i}.{k}" for k in "hcnm"} <= names for i in slstm)

    references = [copy.deepcopy(reference), copy.deepcopy(reference)]
    with policyrt.load(bundle, "onnxruntime", batch_size=2) as session:
        action_err, state_err = run_against_package(session, references)
    print(f"{name}: action max abs {action_err:.2e}, state max scaled {state_err:.2e}")
    assert action_err <= 1e-5, action_err
    assert state_err <= 1e-5, state_err


def test_verify_replays_the_parity_rollout(exported):
    from policyrt.bundle import open_bundle
    from policyrt.runtime.verify import verify_backend

    bundle = open_bundle(exported[3])
    assert verify_backend(bundle, "torch").ok
    report = verify_backend(bundle, "onnxruntime")
    assert report.outputs[0].name == "action" and report.outputs[0].ok()
    assert all(o.max_rel <= 1e-4 or o.max_abs <= 1e-5 for o in report.outputs)


def test_verify_passes_slstm_states_on_onnxruntime(exported):
    from policyrt.bundle import open_bundle
    from policyrt.runtime.verify import verify_backend

    assert verify_backend(open_bundle(exported[3]), "onnxruntime").ok


def test_package_reference_for_compare_is_the_source_model(tmp_path):
    """`package_reference` (what `policyrt compare --reference` runs) rebuilds the source model itself."""
    from policyrt.bundle import open_bundle
    from policyrt.export.bundle_export import export_policy
    from policyrt.policies.xlstm_reference import package_reference

    name = "slstm+mlstm+slstm, CUDA layout, inputs reordered/subset, linear head"
    source, reference = make_case(tmp_path, name, seed=5)  # a well-conditioned case: see make_case
    policy, doc = import_xlstm_stack(source, dict(NO_OPTIONS))
    bundle = export_policy(policy, doc, source, tmp_path / "stack.policy", progress=lambda *_: None)
    rebuilt = package_reference(source, open_bundle(bundle).manifest)
    obs, reward = rollout_inputs(seed=5)
    reference.reset(40.0)
    rebuilt.reset(40.0)
    last = np.zeros(2, np.float32)
    for t in range(50):
        a = reference.act(obs[t, 0], reward[t, 0], last)
        b = rebuilt.act(obs[t, 0], reward[t, 0], last)
        np.testing.assert_allclose(a, b, atol=1e-6)
        last = a


def test_cuda_layout_functions_are_the_packages(tmp_path):
    """The restated layout functions equal the package's sLSTMCell_cuda ones (built without a kernel)."""
    from xlstm.blocks.slstm.cell import sLSTMCell_cuda, sLSTMCellConfig

    cell = sLSTMCell_cuda(sLSTMCellConfig(hidden_size=48, num_heads=3), skip_backend_init=True)
    ext_kernel, ext_bias = torch.randn(3, 16, 4, 16), torch.randn(3, 4, 16)
    assert torch.equal(cell._recurrent_kernel_ext2int(ext_kernel), cuda_recurrent_kernel_ext2int(ext_kernel, 3, 16))
    assert torch.equal(cell._bias_ext2int(ext_bias), cuda_bias_ext2int(ext_bias, 3, 16))
    internal_kernel, internal_bias = torch.randn(3, 16, 64), torch.randn(192)
    assert torch.equal(cell._recurrent_kernel_int2ext(internal_kernel), cuda_recurrent_kernel_int2ext(internal_kernel, 3, 16))
    assert torch.equal(cell._bias_int2ext(internal_bias), cuda_bias_int2ext(internal_bias, 3, 16))


# --- wrong layouts are caught -------------------------------------------------------------------------

def _cuda_source(tmp_path):
    return make_case(tmp_path, "slstm+mlstm+slstm, CUDA layout, inputs reordered/subset, linear head", seed=6)


def test_cuda_weights_declared_vanilla_are_refused_with_both_shapes(tmp_path):
    source, _ = _cuda_source(tmp_path)
    doc = json.loads((source / "config.json").read_text())
    doc["stack"]["slstm_block"]["slstm"]["backend"] = "vanilla"
    (source / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ImportRefused) as err:
        import_xlstm_stack(source, dict(NO_OPTIONS))
    text = str(err.value)
    assert "backbone.blocks.0.xlstm.slstm_cell._recurrent_kernel_ has shape [2, 16, 64]" in text
    assert "the config implies [2, 64, 16]" in text and "cuda backend's layout" in text


def test_treating_cuda_layout_as_vanilla_fails_parity_with_the_package(tmp_path):
    """Copying the CUDA-layout tensors into the vanilla cell by shape alone (reshape, no layout
    conversion) loads without complaint — and is caught by the parity check against the package's step;
    the importer's conversion through the external format passes the same check."""
    import policyrt.policies.xlstm_import as xi
    from policyrt.policies.kinds import make_step

    source, reference = _cuda_source(tmp_path)
    right, _ = import_xlstm_stack(source, dict(NO_OPTIONS))

    def naive(vanilla_cell, cuda_cell, kernel, bias):
        return kernel.reshape(vanilla_cell._recurrent_kernel_.shape).contiguous(), bias.clone()

    original = xi.slstm_cuda_to_vanilla
    xi.slstm_cuda_to_vanilla = naive
    try:
        wrong, _ = import_xlstm_stack(source, dict(NO_OPTIONS))
    finally:
        xi.slstm_cuda_to_vanilla = original

    obs, reward = rollout_inputs(seed=7)

    def worst(policy):
        step = make_step(policy)
        state = step.initial_states(1)
        reference.reset(50.0)
        last = np.zeros(2, np.float32)
        err = 0.0
        with torch.no_grad():
            for t in range(100):
                expected = reference.act(obs[t, 0], reward[t, 0], last)
                action, *state = step(
                    torch.from_numpy(obs[t, :1]), torch.from_numpy(last[None]), torch.tensor(reward[t, :1]),
                    torch.tensor([50.0]), torch.tensor([t == 0]), *state,
                )
                err = max(err, float(np.abs(action[0].numpy() - expected).max()))
                last = expected
        return err

    assert worst(right) <= 1e-5
    assert worst(wrong) > 1e-2


# --- bad sources ---------------------------------------------------------------------------------------

@pytest.fixture()
def mixed_source(tmp_path):
    source, _ = make_case(tmp_path, "mlstm+slstm(ffn), vanilla, all inputs, tanh", seed=8)
    return source


def _edit_config(source, edit):
    doc = json.loads((source / "config.json").read_text())
    edit(doc)
    (source / "config.json").write_text(json.dumps(doc))


def _edit_weights(source, edit):
    from safetensors.torch import load_file, save_file

    weights = dict(load_file(str(source / "model.safetensors")))
    edit(weights)
    save_file(weights, str(source / "model.safetensors"))


def _refused(source, options=None) -> str:
    with pytest.raises(ImportRefused) as err:
        import_xlstm_stack(source, {**NO_OPTIONS, **(options or {})})
    return str(err.value)


def test_unknown_stack_field_is_named(mixed_source):
    _edit_config(mixed_source, lambda d: d["stack"]["slstm_block"]["slstm"].update(gate_order="ifzo"))
    assert "stack.slstm_block.slstm.gate_order" in _refused(mixed_source)


def test_unsupported_cell_function_is_named(mixed_source):
    _edit_config(mixed_source, lambda d: d["stack"]["slstm_block"]["slstm"].update(function="lstm", num_states=2))
    text = _refused(mixed_source)
    assert "stack.slstm_block.slstm.function='lstm'" in text and "cannot represent" in text


def test_cuda_forward_clip_is_refused(tmp_path):
    source, _ = _cuda_source(tmp_path)
    _edit_config(source, lambda d: d["stack"]["slstm_block"]["slstm"].update(gradient_recurrent_clipval=5.0))
    assert "stack.slstm_block.slstm.gradient_recurrent_clipval" in _refused(source)


@pytest.mark.parametrize("field", ["action_squash", "inputs", "obs_dim"])
def test_missing_source_field_is_named(mixed_source, field):
    _edit_config(mixed_source, lambda d: d.pop(field))
    assert f"'{field}' is missing" in _refused(mixed_source)


def test_bounds_and_return_scale_that_cannot_be_inferred_are_named(mixed_source):
    _edit_config(mixed_source, lambda d: [d.pop(k) for k in ("action_low", "action_high", "return_scale")])
    assert "action_low/action_high are required" in _refused(mixed_source)
    text = _refused(mixed_source, {"action_low": [-1.0, -1.0], "action_high": [1.0, 1.0]})
    assert "return_scale is required" in text and "return_to_go" in text
    policy, doc = import_xlstm_stack(mixed_source, {**NO_OPTIONS, "action_low": [-1.0, -1.0], "action_high": [1.0, 1.0],
                                                    "return_scale": 10.0})
    assert doc["import"]["assumed"]["return_scale_from"] == "--return-scale"


def test_degenerate_bounds_and_statistics_are_refused(mixed_source):
    _edit_config(mixed_source, lambda d: d.update(action_low=[-2.0, 3.0], action_high=[1.0, 3.0]))
    assert "every high must exceed its low" in _refused(mixed_source)
    _edit_config(mixed_source, lambda d: d.update(action_low=[-2.0, -1.0], obs_std=[1.0, 0.0, 1.0, 1.0]))
    assert "obs_std" in _refused(mixed_source)


def test_a_stack_the_package_cannot_build_is_refused(mixed_source):
    _edit_config(mixed_source, lambda d: d["stack"]["mlstm_block"]["mlstm"].update(conv1d_kernel_size=0))
    assert "the xlstm package cannot build this stack" in _refused(mixed_source)


def test_option_that_contradicts_config_is_refused(mixed_source):
    assert "--return-scale" in _refused(mixed_source, {"return_scale": 1000.0})
    assert "--context" in _refused(mixed_source, {"context": 20})


def test_shape_mismatch_names_both_shapes(mixed_source):
    _edit_weights(mixed_source, lambda w: w.update({"backbone.blocks.0.xlstm.proj_up.weight": torch.zeros(100, 32)}))
    text = _refused(mixed_source)
    assert "backbone.blocks.0.xlstm.proj_up.weight has shape [100, 32]" in text and "implies [128, 32]" in text


def test_unused_and_missing_keys_are_errors(mixed_source):
    def edit(w):
        w["backbone.blocks.1.extra_scale"] = torch.ones(3)
        del w["backbone.blocks.1.ffn.proj_down.weight"]

    _edit_weights(mixed_source, edit)
    text = _refused(mixed_source)
    assert "unused ['backbone.blocks.1.extra_scale']" in text
    assert "missing ['backbone.blocks.1.ffn.proj_down.weight']" in text


def test_import_records_ignored_fields_and_assumptions(tmp_path):
    source, _ = _cuda_source(tmp_path)
    policy, doc = import_xlstm_stack(source, dict(NO_OPTIONS))
    record = doc["import"]
    assert record["slstm_backend"] == "cuda" and "int2ext" in record["slstm_layout"]
    assert record["ignored_config"]["stack.slstm_block.slstm.backend"]["value"] == "cuda"
    assert "prev_action" in record["assumed"]
    assert policy.config.slstm_block.feedforward.act_fn == "swish"
    assert policy.config.action_squash == "none" and not policy.config.add_post_blocks_norm


def test_cli_export_and_compare_from_xlstm_stack(tmp_path, capsys):
    from policyrt.cli import main

    name = "slstm+mlstm+slstm, CUDA layout, inputs reordered/subset, linear head"
    source, _ = make_case(tmp_path, name, seed=7)  # a well-conditioned case: see make_case
    out = tmp_path / "cli.policy"
    assert main(["export", "--from", "xlstm-stack", str(source), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["import"]["slstm_backend"] == "cuda"
    assert any("--from xlstm-stack" in c for c in manifest["provenance"]["commands"])
    assert main(["compare", str(out), "--reference", str(source), "--from", "xlstm-stack", "--steps", "300"]) == 0
    assert main(["export", "--from", "xlstm-stack", str(source), "--out", str(tmp_path / "x.policy"),
                 "--return-scale", "3"]) == 1
    assert "return_scale" in capsys.readouterr().err
