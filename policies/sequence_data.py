"""Training windows cut from a demonstration dataset, shared by the xLSTM and DT trainers."""

from __future__ import annotations

import numpy as np

LABELS = ("applied", "expert", "behaviour")


def episode_arrays(dataset, labels: str = "applied") -> list[dict[str, np.ndarray]]:
    """Per episode, aligned on t: obs, the applied action, the previous applied action and reward,
    the return-to-go before t (the episode's own return: return-conditioned), the timestep, and the
    label for obs_t, one of:
    - `applied`: the action the episode took. A low commanded return then reproduces a poor
      episode's behaviour; the labels carry the collection noise.
    - `behaviour`: the mean action of the scripted policy that collected the episode (datasets of
      `policyrt sim collect` record its --expert-gain g and --random-mix w levels):
      (1-w) g expert + w mid-range. The same conditioning as `applied` without the noise, so it
      trains in fewer steps.
    - `expert`: the expert's clean action everywhere (behaviour cloning; the return token then
      barely matters)."""
    if labels not in LABELS:
        raise ValueError(f"labels must be one of {', '.join(LABELS)}, got {labels!r}")
    levels = _behaviour_levels(dataset) if labels == "behaviour" else None
    out = []
    for i, ep in enumerate(dataset.episodes):
        t_len = len(ep)
        prev_action = np.zeros_like(ep.actions)
        prev_action[1:] = ep.actions[:-1]
        prev_reward = np.zeros(t_len, np.float32)
        prev_reward[1:] = ep.rewards[:-1]
        rtg = (ep.total_return - np.concatenate([[0.0], np.cumsum(ep.rewards)[:-1]])).astype(np.float32)
        out.append({
            "obs": ep.observations,
            "action": ep.actions,
            "prev_action": prev_action,
            "prev_reward": prev_reward,
            "rtg": rtg,
            "timestep": np.arange(t_len, dtype=np.int64),
            "label": _label(dataset, ep, labels, None if levels is None else levels[i % len(levels)]),
        })
    return out


def _behaviour_levels(dataset) -> list[tuple[float, float]]:
    """(gain, mix) of each round-robin level, as `policyrt sim collect` assigned them."""
    meta = dataset.meta
    if "random_mix" not in meta and "expert_gain" not in meta:
        raise ValueError("labels 'behaviour' need the levels the dataset was collected with (random_mix / "
                         "expert_gain in dataset.json), which only `policyrt sim collect` records; use --labels "
                         "applied or expert for this dataset")
    gains, mixes = meta.get("expert_gain") or [1.0], meta.get("random_mix") or [0.0]
    count = len(gains) * len(mixes) // np.gcd(len(gains), len(mixes))  # the pairing repeats after lcm
    return [(float(gains[i % len(gains)]), float(mixes[i % len(mixes)])) for i in range(count)]


def _label(dataset, ep, labels: str, level: tuple[float, float] | None) -> np.ndarray:
    if labels == "applied":
        return ep.actions
    if labels == "expert" or level == (1.0, 0.0):
        return ep.expert_actions
    gain, mix = level
    low, high = (np.asarray(dataset.meta[k], np.float32) for k in ("action_low", "action_high"))
    mean = (1.0 - mix) * gain * ep.expert_actions + mix * (low + high) / 2
    return np.clip(mean, low, high).astype(np.float32)
