"""On-disk demonstration dataset: `DIR/dataset.json` (what made it) + the data in one of two formats.

- `minari` (default): a Minari dataset under DIR (see minari_io.py), readable by `minari.load_dataset`.
- `npz`: `DIR/episodes.npz`, rows concatenated over episodes; `episode_starts[i]` is the first row of
  episode i.
Per step t either way: observation o_t, applied (possibly noisy) action a_t, the expert's clean action
for o_t, reward r_t, and the termination/truncation flags.
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
    final_observation: np.ndarray | None = None  # o_T, after the last step (Minari keeps N+1 rows)

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

    def save(self, out: Path, fmt: str = "minari") -> None:
        """Write the dataset to `out`, replacing what was there only once the new one is complete."""
        import shutil
        import tempfile

        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
        try:
            self._write(work, fmt, name=out.name)
            if out.exists():
                shutil.rmtree(out)
            work.rename(out)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise

    def _write(self, out: Path, fmt: str, name: str) -> None:
        meta = {**self.meta, "format": fmt}
        if fmt == "minari":
            from .minari_io import write_minari

            finals = [e.final_observation if e.final_observation is not None else e.observations[-1] for e in self.episodes]
            meta["minari_dataset_id"] = write_minari(
                self.episodes, finals, out, name, self.meta["env_id"], self.meta.get("expert", "?"),
                f"policyrt demonstrations: {self.meta.get('command') or 'collected by policyrt'}",
            )
        elif fmt == "npz":
            self._save_npz(out)
        else:
            raise ValueError(f"unknown dataset format {fmt!r} (minari or npz)")
        (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")

    def _save_npz(self, out: Path) -> None:
        arrays = {f: np.concatenate([getattr(e, f) for e in self.episodes]) for f in FIELDS}
        arrays["episode_starts"] = np.cumsum([0] + [len(e) for e in self.episodes[:-1]]).astype(np.int64)
        np.savez_compressed(out / "episodes.npz", **arrays)


def load_dataset(path: Path) -> Dataset:
    path = Path(path)
    meta_file = path / "dataset.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"dataset {path} has no dataset.json; make one with `policyrt sim collect`")
    meta = json.loads(meta_file.read_text())
    if meta.get("format", "npz") == "minari":
        from .minari_io import read_minari

        episodes = read_minari(path, meta["minari_dataset_id"])
    else:
        episodes = _load_npz(path / "episodes.npz")
    for i, ep in enumerate(episodes):
        if len(ep) == 0:
            raise ValueError(f"{path}: episode {i} is empty")
        for name in ("actions", "expert_actions", "terminations", "truncations"):
            if len(getattr(ep, name)) != len(ep):
                raise ValueError(f"{path}: episode {i}: field {name!r} has {len(getattr(ep, name))} rows, rewards has {len(ep)}")
    return Dataset(episodes=episodes, meta=meta)


def _load_npz(data_file: Path) -> list[Episode]:
    if not data_file.is_file():
        raise FileNotFoundError(f"{data_file}: missing; make the dataset with `policyrt sim collect`")
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
    return [Episode(**{f: arrays[f][lo:hi] for f in FIELDS}) for lo, hi in zip(bounds[:-1], bounds[1:])]
