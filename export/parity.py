"""Record the reference rollout that goes into `parity.json` and measure a backend against it."""

from __future__ import annotations

import copy

import numpy as np

from policyrt import contract
from policyrt.arrays import encode_array

PARITY_STEPS = 256
PARITY_BATCH = 2


def reset_schedule(steps: int, batch: int) -> np.ndarray:
    """Every slot starts at step 0; then each slot resets on its own, mid-rollout, at different steps."""
    reset = np.zeros((steps, batch), bool)
    reset[0] = True
    for slot in range(batch):
        reset[steps * (slot + 2) // (batch + 3), slot] = True
    reset[(3 * steps) // 4] = True  # and once all together
    return reset


def record_reference(step, obs_mean, obs_std, act_dim: int, target_return: float, seed: int = 0,
                     steps: int = PARITY_STEPS, batch: int = PARITY_BATCH):
    """Run the PyTorch step module closed on itself (prev_action = its own last action), in float64.

    Observations are a smooth random walk scaled like the training data, so the graph sees realistic
    magnitudes. Returns (inputs dict [T, B, ...], actions [T, B, act], states per step list of dicts);
    inputs, actions and states are float32 as the contract has them.

    Why float64: a backend's parity error is then its own fp32 rounding alone. Against a float32 torch
    run it is the difference of two fp32 roundings, each up to the model's sensitivity to rounding away
    from the exact step, and torch's half depends on which CPU kernels it dispatches (AVX-512 or AVX2):
    a per-head LayerNorm over a nearly constant vector (variance below its eps 1e-5, gain up to 316)
    turns ~5e-7 of rounding into ~3e-5 at the next block, so one export passed on one x86 machine and
    was refused on another. The float64 step is the same function to ~1e-15 on every machine.
    """
    import torch

    exact = copy.deepcopy(step).double()  # float parameters and buffers only: int/bool ones stay as they are

    def widen(tensor):
        return tensor.double() if tensor.is_floating_point() else tensor

    rng = np.random.default_rng(seed)
    obs_dim = len(obs_mean)
    walk = np.zeros((batch, obs_dim))
    inputs = {t.name: np.zeros((steps, batch, *t.shape(obs_dim, act_dim)), t.dtype) for t in contract.HOST_INPUTS}
    reset = inputs[contract.RESET]
    reset[:] = reset_schedule(steps, batch)
    inputs[contract.REWARD][:] = rng.uniform(0.0, 1.0, (steps, batch))
    inputs[contract.TARGET_RETURN][:] = np.float32(target_return) * np.linspace(1.0, 0.8, batch, dtype=np.float32)
    actions = np.zeros((steps, batch, act_dim), np.float32)
    states_per_step = []
    state = [widen(s) for s in step.initial_states(batch)]
    last = np.zeros((batch, act_dim), np.float32)
    with torch.no_grad():
        for t in range(steps):
            walk = 0.9 * walk + 0.45 * rng.standard_normal(walk.shape)
            inputs[contract.OBS][t] = np.asarray(obs_mean) + np.asarray(obs_std) * walk
            inputs[contract.PREV_ACTION][t] = np.where(reset[t][:, None], 0.0, last)
            inputs[contract.REWARD][t] = np.where(reset[t], 0.0, inputs[contract.REWARD][t])
            feeds = [widen(torch.from_numpy(inputs[name][t])) for name in contract.INPUTS]
            action, *state = exact(*feeds, *state)
            actions[t] = action.numpy()  # rounded to float32: the fed-back prev_action is a contract input
            last = actions[t]
            states_per_step.append({s.name: v.numpy().astype(s.dtype) for s, v in zip(step.specs, state)})
    return inputs, actions, states_per_step


def parity_document(inputs, actions, final_state: dict, tolerance: float, results: dict) -> dict:
    return {
        "format": 1,
        "steps": int(actions.shape[0]),
        "batch": int(actions.shape[1]),
        "tolerance": tolerance,
        "inputs": {k: encode_array(v) for k, v in inputs.items()},
        "reference": {
            "backend": "torch",
            "action": encode_array(actions),
            "final_state": {k: encode_array(v) for k, v in final_state.items()},
        },
        "results": results,
    }


# The export gate. The reference is the float64 step, so an fp32 backend's error is its own rounding: a few
# 1e-7 for most policies, but a model that amplifies rounding (an xLSTM head whose output LayerNorm sees a
# variance below its eps, gain ~300) puts ANY fp32 implementation ~1e-5 from the exact step, the PyTorch
# fp32 step included. So the gate is the larger of --tolerance and NOISE_FACTOR times the PyTorch fp32
# step's own error against the float64 reference on the same inputs (two independent fp32 roundings of
# one function differ by a small multiple of either), capped at NOISE_CAP: past that the model is too
# ill-conditioned for fp32 to be checked this way, and the export says so instead of passing it. That
# is the default; an explicit --tolerance is applied as given (strict or loose, the user's call).
DEFAULT_TOLERANCE = 1e-5
NOISE_FACTOR = 4.0
NOISE_CAP = 1e-4  # the fp32 TensorRT verify tolerance (runtime/verify.py): no looser than a GPU is held


def fp32_noise(step, inputs: dict, ref_actions, ref_states) -> dict:
    """The PyTorch fp32 step replayed on the recorded inputs, judged against the float64 reference the
    way a backend is: {"action": max abs, "state": max over tensors and steps of the scaled error}."""
    import torch

    from policyrt.runtime.verify import state_scale

    fp32 = copy.deepcopy(step).float()
    state = list(fp32.initial_states(inputs[contract.OBS].shape[1]))
    action_err = state_err = 0.0
    with torch.no_grad():
        for t in range(ref_actions.shape[0]):
            action, *state = fp32(*(torch.from_numpy(inputs[name][t]) for name in contract.INPUTS), *state)
            action_err = max(action_err, float(np.abs(action.numpy() - ref_actions[t]).max()))
            for spec, value in zip(step.specs, state):
                want = ref_states[t][spec.name]
                err = float(np.abs(value.numpy().astype(np.float64) - want).max()) / state_scale(want)
                state_err = max(state_err, err)
    return {"action": action_err, "state": state_err}


def export_bound(tolerance: float | None, noise: dict) -> float:
    """What ONNX Runtime's error is held to at export (and recorded as parity.json's tolerance):
    an explicit `tolerance`, else the default rule above."""
    if tolerance is not None:
        return tolerance
    return max(DEFAULT_TOLERANCE, min(NOISE_FACTOR * max(noise.values()), NOISE_CAP))


def parity_refusal(action_err, state_scaled: dict, tolerance: float | None, bound: float, noise: dict) -> str | None:
    """None if ONNX Runtime is within `bound` everywhere; else one sentence naming only what is over.

    `action_err` is runtime.verify's OutputError for the actions judged at `bound`; `state_scaled` the
    worst scaled error per state tensor."""
    over = []
    if not action_err.ok():
        over.append(f"action {action_err.max_abs:.2e} (first over at step {action_err.first_step_over})")
    over += [f"state {name} {err:.2e} (scaled by its size)" for name, err in state_scaled.items() if not err <= bound]
    if not over:
        return None
    why = (f"--tolerance {tolerance:g}" if tolerance is not None else
           f"no --tolerance: the larger of {DEFAULT_TOLERANCE:g} and {NOISE_FACTOR:g} x the PyTorch fp32 step's "
           f"own error, up to {NOISE_CAP:g}")
    return (f"ONNX Runtime does not reproduce the float64 PyTorch step within {bound:.2g} ({why}): " + ", ".join(over)
            + f". The PyTorch fp32 step itself is within {noise['action']:.1e} (actions) and {noise['state']:.1e}"
            " (states): an error far above that is a wrong graph; one near it is rounding, which a larger"
            " --tolerance accepts")
