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
