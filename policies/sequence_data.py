"""Training windows cut from a demonstration dataset, shared by the xLSTM and DT trainers."""

from __future__ import annotations

import numpy as np

LABELS = ("applied", "expert", "behaviour")


def dataset_for_training(args, command: str | None):
    """What both trainers derive from the dataset the same way -> (dataset, config fields, meta):
    the config fields it fixes (dims, action bounds, observation normalization and range (per
    channel min/max, for the controller's observation guard), return scale, the default
    commanded return: --target-return or the dataset's best) and the checkpoint's
    provenance (collect -> train: the commands that reproduce the weights, in order)."""
    from policyrt.episodes import load_dataset

    dataset = load_dataset(args.data)
    all_obs = np.concatenate([e.observations for e in dataset.episodes])
    low, high = dataset.meta.get("action_low"), dataset.meta.get("action_high")
    if low is None or high is None:
        raise ValueError(f"{args.data}/dataset.json: action_low/action_high missing; recollect the dataset")
    fields = {
        "obs_dim": dataset.obs_dim,
        "act_dim": dataset.act_dim,
        "action_low": tuple(low),
        "action_high": tuple(high),
        "obs_mean": tuple(float(v) for v in all_obs.mean(0)),
        "obs_std": tuple(float(v) for v in np.maximum(all_obs.std(0), 1e-3)),
        "obs_low": tuple(float(v) for v in all_obs.min(0)),
        "obs_high": tuple(float(v) for v in all_obs.max(0)),
        "return_scale": args.return_scale,
        "target_return": float(dataset.returns().max()) if args.target_return is None else args.target_return,
    }
    meta = {
        "trained_with": {k: str(v) for k, v in vars(args).items()},
        "dataset": dataset.meta,
        "commands": [c for c in (dataset.meta.get("command"), command) if c],
    }
    return dataset, fields, meta


def half_range(fields: dict) -> np.ndarray:
    """Half the action range per dimension: the unit of both trainers' loss."""
    return ((np.array(fields["action_high"]) - np.array(fields["action_low"])) / 2).astype(np.float32)


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
      barely matters).
    - `auto`: behaviour where the dataset records its collection levels, else applied."""
    if labels == "auto":
        labels = "behaviour" if {"random_mix", "expert_gain"} & set(dataset.meta) else "applied"
    if labels not in LABELS:
        raise ValueError(f"labels must be one of auto, {', '.join(LABELS)}, got {labels!r}")
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


def sample_windows(episodes, rng: np.random.Generator, batch: int, window: int, fields: tuple[str, ...],
                   left_pad: bool = False):
    """`batch` windows of `window` steps -> ({field: [batch, window, ...]}, mask [batch, window]).

    Right padding (xLSTM): windows start inside the episode and are padded at the end when it is short.
    Left padding (DT): windows may also start before the episode, padded at the front, which is
    exactly what the DT sees in its first K-1 steps of an episode.
    """
    cols: dict[str, list] = {f: [] for f in fields}
    masks = []
    for _ in range(batch):
        arrays = episodes[rng.integers(len(episodes))]
        t_len = len(arrays["obs"])
        if left_pad:
            start = int(rng.integers(-(window - 1), max(1, t_len - window + 1)))
        else:
            start = int(rng.integers(0, max(1, t_len - window + 1)))
        lo, hi = max(start, 0), min(t_len, start + window)
        before, after = lo - start, window - (hi - start)
        for name in fields:
            piece = arrays[name][lo:hi]
            pads = [np.zeros((n, *piece.shape[1:]), piece.dtype) for n in (before, after)]
            cols[name].append(np.concatenate([pads[0], piece, pads[1]]))
        masks.append(np.concatenate([np.zeros(before), np.ones(hi - lo), np.zeros(after)]).astype(np.float32))
    return {name: np.stack(c) for name, c in cols.items()}, np.stack(masks)
