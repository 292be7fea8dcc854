"""Datasets in Minari's format (the maintained successor of D4RL), created locally — no hub.

`write_minari` turns collected episodes into Minari `EpisodeBuffer`s and calls
`minari.create_dataset_from_buffers` with the dataset root pointed at DIR, so the result is
`DIR/policyrt/<name>-v0/data/main_data.hdf5` and `minari.load_dataset("policyrt/<name>-v0")` reads it
with `MINARI_DATASETS_PATH=DIR`. The expert's clean action of every step rides along in the episode
infos (`expert_action`); observations keep Minari's N+1 rows per episode.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import numpy as np

NAMESPACE = "policyrt"


def dataset_id_for(name: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "dataset"
    return f"{NAMESPACE}/{name}-v0"


@contextlib.contextmanager
def _datasets_root(root: Path):
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous


def write_minari(episodes, final_observations, out: Path, name: str, env_id: str, algorithm: str,
                 description: str) -> str:
    """Episodes (sim.dataset.Episode) plus each episode's observation after its last step -> Minari
    under `out`, with a dataset id made from `name` (the dataset directory's final name)."""
    import warnings

    import gymnasium as gym
    import minari
    from minari.data_collector import EpisodeBuffer

    buffers = []
    for i, (ep, last_obs) in enumerate(zip(episodes, final_observations)):
        buffers.append(EpisodeBuffer(
            id=i,
            observations=np.concatenate([ep.observations, last_obs[None]]).astype(np.float32),
            actions=ep.actions,
            rewards=ep.rewards.astype(np.float64).tolist(),
            terminations=ep.terminations.tolist(),
            truncations=ep.truncations.tolist(),
            infos={"expert_action": ep.expert_actions},
        ))
    dataset_id = dataset_id_for(name)
    # Absolute: Minari joins a relative root with paths of its own and ends up nowhere.
    with _datasets_root(Path(out).resolve()), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Minari nags about author/permalink fields
        minari.create_dataset_from_buffers(
            dataset_id, buffers, env=gym.make(env_id), algorithm_name=algorithm, description=description,
            author="policyrt", author_email="n/a", code_permalink="n/a",
        )
    return dataset_id


def read_minari(root: Path, dataset_id: str):
    """-> list of sim.dataset.Episode; a missing field names the episode and the field."""
    import minari

    from .dataset import Episode

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
