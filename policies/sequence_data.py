"""Training windows cut from a demonstration dataset, shared by the xLSTM and DT trainers."""

from __future__ import annotations

import numpy as np

LABELS = ("applied", "expert")


def episode_arrays(dataset, labels: str = "applied") -> list[dict[str, np.ndarray]]:
    """Per episode, aligned on t: obs, the applied action, the previous applied action and reward,
    the return-to-go before t (the episode's own return: return-conditioned), the timestep, and the
    label for obs_t: the action applied (`applied`: learn what each episode did, so a low commanded
    return reproduces a poor episode's behaviour) or the expert's clean one (`expert`: pure
    behaviour cloning, the return token then barely matters)."""
    if labels not in LABELS:
        raise ValueError(f"labels must be one of {', '.join(LABELS)}, got {labels!r}")
    out = []
    for ep in dataset.episodes:
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
            "label": ep.actions if labels == "applied" else ep.expert_actions,
        })
    return out


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
