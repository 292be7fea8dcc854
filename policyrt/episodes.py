"""Episodes and the on-disk dataset: `DIR/dataset.json` (what made it) + the data in one of two formats.

- `minari`: a Minari dataset under DIR, readable by `minari.load_dataset` (the maintained successor
  of D4RL), created locally, no hub: `DIR/policyrt/<name>-v0/data/main_data.hdf5`, which
  `minari.load_dataset("policyrt/<name>-v0")` reads with `MINARI_DATASETS_PATH=DIR`. The expert's
  clean action of every step rides along in the episode infos (`expert_action`); observations keep
  Minari's N+1 rows per episode.
- `npz`: `DIR/episodes.npz`, rows concatenated over episodes; `episode_starts[i]` is the first row of
  episode i.
Per step t either way: observation o_t, applied (possibly noisy) action a_t, the expert's clean action
for o_t, reward r_t, and the termination/truncation flags.

The one definition for everything that writes or reads episodes: `policyrt sim collect`, the
real-time controller's episode recorder, the trainers. Board-side module: standard library and numpy
at module level, Python 3.10 (the recorder writes npz on a board); the minari format imports minari
and gymnasium where it is used (the sim extra, a workstation).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policyrt.atomic_dir import replace_dir_atomically

FIELDS = ("observations", "actions", "expert_actions", "rewards", "terminations", "truncations")
FORMATS = ("minari", "npz")
MINARI_NAMESPACE = "policyrt"


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
        """Write the dataset to `out`, replacing a previous dataset there only once the new one is
        complete. A directory that holds something else is refused, not replaced."""
        if fmt not in FORMATS:
            raise ValueError(f"unknown dataset format {fmt!r}; use one of {', '.join(FORMATS)}")
        out = Path(out)
        replaceable = out.is_dir() and ((out / "dataset.json").is_file() or not any(out.iterdir()))
        if out.exists() and not replaceable:
            raise FileExistsError(f"{out}: exists and is not a dataset (no dataset.json); not replacing it")
        with replace_dir_atomically(out) as work:
            self._write(work, fmt, name=out.name)

    def _write(self, out: Path, fmt: str, name: str) -> None:
        meta = {**self.meta, "format": fmt}
        if fmt == "minari":
            meta["minari_dataset_id"] = _write_minari(self, out, name)
        else:
            arrays = {f: np.concatenate([getattr(e, f) for e in self.episodes]) for f in FIELDS}
            arrays["episode_starts"] = np.cumsum([0] + [len(e) for e in self.episodes[:-1]]).astype(np.int64)
            np.savez_compressed(out / "episodes.npz", **arrays)
        (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_dataset(path: Path) -> Dataset:
    path = Path(path)
    meta_file = path / "dataset.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"dataset {path} has no dataset.json; make one with `policyrt sim collect`")
    meta = json.loads(meta_file.read_text())
    if meta.get("format", "npz") == "minari":
        episodes = _read_minari(path, meta["minari_dataset_id"])
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


def minari_dataset_id(name: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "dataset"
    return f"{MINARI_NAMESPACE}/{name}-v0"


@contextlib.contextmanager
def _minari_root(root: Path):
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous


def _write_minari(dataset: Dataset, out: Path, name: str) -> str:
    """Episodes -> Minari `EpisodeBuffer`s -> `minari.create_dataset_from_buffers` with the dataset root
    pointed at `out`; the dataset id is made from `name` (the dataset directory's final name)."""
    import warnings

    try:
        import gymnasium as gym
        import minari
        from minari.data_collector import EpisodeBuffer
    except ImportError as exc:  # a board: no sim extra
        raise RuntimeError(f"the minari format needs the sim extra ({exc}); use format npz") from None

    meta = dataset.meta
    buffers = []
    for i, ep in enumerate(dataset.episodes):
        last_obs = ep.observations[-1] if ep.final_observation is None else ep.final_observation
        buffers.append(EpisodeBuffer(
            id=i,
            observations=np.concatenate([ep.observations, np.asarray(last_obs)[None]]).astype(np.float32),
            actions=ep.actions,
            rewards=ep.rewards.astype(np.float64).tolist(),
            terminations=ep.terminations.tolist(),
            truncations=ep.truncations.tolist(),
            infos={"expert_action": ep.expert_actions},
        ))
    dataset_id = minari_dataset_id(name)
    # Absolute: Minari joins a relative root with paths of its own and ends up nowhere.
    with _minari_root(Path(out).resolve()), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Minari nags about author/permalink fields
        minari.create_dataset_from_buffers(
            dataset_id, buffers, env=gym.make(meta["env_id"]), algorithm_name=meta.get("expert", "?"),
            description=f"policyrt demonstrations: {meta.get('command') or 'collected by policyrt'}",
            author="policyrt", author_email="n/a", code_permalink="n/a",
        )
    return dataset_id


def _read_minari(root: Path, dataset_id: str) -> list[Episode]:
    """A missing field names the episode and the field."""
    import minari

    data_path = Path(root).resolve() / dataset_id / "data"
    if not (data_path / "main_data.hdf5").is_file():
        raise FileNotFoundError(f"{data_path}: no Minari dataset {dataset_id!r} here")
    episodes = []
    for ep in minari.MinariDataset(data_path).iterate_episodes():
        infos = ep.infos or {}
        if "expert_action" not in infos:
            raise ValueError(f"{data_path}: episode {ep.id} has no infos/expert_action (not collected by policyrt?)")
        steps = len(ep.actions)
        if ep.observations.shape[0] != steps + 1:
            raise ValueError(f"{data_path}: episode {ep.id}: {ep.observations.shape[0]} observations for {steps} actions")
        episodes.append(Episode(
            observations=np.asarray(ep.observations[:-1], np.float32),
            actions=np.asarray(ep.actions, np.float32),
            expert_actions=np.asarray(infos["expert_action"], np.float32),
            rewards=np.asarray(ep.rewards, np.float32),
            terminations=np.asarray(ep.terminations, bool),
            truncations=np.asarray(ep.truncations, bool),
        ))
    return episodes
