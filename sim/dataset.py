"""On-disk demonstration dataset: `DIR/dataset.json` (what made it) + `DIR/episodes.npz` (the data).

Rows are concatenated over episodes; `episode_starts[i]` is the first row of episode i. Per row t:
observation o_t, applied (possibly noisy) action a_t, the expert's clean action for o_t, reward r_t.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FIELDS = ("observations", "actions", "expert_actions", "rewards", "terminations", "truncations")


@dataclass
class Episode:
    observations: np.ndarray  # [T, obs_dim]
    actions: np.ndarray  # [T, act_dim] applied
    expert_actions: np.ndarray  # [T, act_dim] clean labels
    rewards: np.ndarray  # [T]
    terminations: np.ndarray  # [T] bool
    truncations: np.ndarray  # [T] bool

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def total_return(self) -> float:
        return float(self.rewards.sum())


@dataclass
class Dataset:
    episodes: list[Episode]
    meta: dict

    @property
    def obs_dim(self) -> int:
        return self.episodes[0].observations.shape[1]

    @property
    def act_dim(self) -> int:
        return self.episodes[0].actions.shape[1]

    def returns(self) -> np.ndarray:
        return np.array([e.total_return for e in self.episodes])

    def save(self, out: Path) -> None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        arrays = {f: np.concatenate([getattr(e, f) for e in self.episodes]) for f in FIELDS}
        arrays["episode_starts"] = np.cumsum([0] + [len(e) for e in self.episodes[:-1]]).astype(np.int64)
        # Write to a temporary name first so an interrupted save never leaves a half-written dataset.
        tmp = out / "episodes.tmp.npz"
        np.savez_compressed(tmp, **arrays)
        tmp.replace(out / "episodes.npz")
        (out / "dataset.json").write_text(json.dumps(self.meta, indent=2) + "\n")


def load_dataset(path: Path) -> Dataset:
    path = Path(path)
    data_file, meta_file = path / "episodes.npz", path / "dataset.json"
    for required in (data_file, meta_file):
        if not required.is_file():
            raise FileNotFoundError(f"dataset {path} has no {required.name}; make one with `policyrt sim collect`")
    meta = json.loads(meta_file.read_text())
    with np.load(data_file) as npz:
        missing = [f for f in (*FIELDS, "episode_starts") if f not in npz.files]
        if missing:
            raise ValueError(f"{data_file}: missing field(s) {', '.join(missing)}")
        arrays = {f: npz[f] for f in (*FIELDS, "episode_starts")}
    n_rows = len(arrays["rewards"])
    for f in FIELDS:
        if len(arrays[f]) != n_rows:
            raise ValueError(f"{data_file}: field {f!r} has {len(arrays[f])} rows, rewards has {n_rows}")
    bounds = [*arrays["episode_starts"].tolist(), n_rows]
    episodes = [
        Episode(**{f: arrays[f][lo:hi] for f in FIELDS}) for lo, hi in zip(bounds[:-1], bounds[1:])
    ]
    for i, ep in enumerate(episodes):
        if len(ep) == 0:
            raise ValueError(f"{data_file}: episode {i} is empty")
    return Dataset(episodes=episodes, meta=meta)
