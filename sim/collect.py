"""Roll a scripted expert in a Gymnasium MuJoCo environment and save the episodes as a Dataset.

A stop request (SIGINT, SIGTERM: policyrt/stopping.py) is seen between two episodes (one takes
well under a second): the episodes played so far are the dataset, saved as a complete one whose
metadata says it was interrupted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policyrt.episodes import Dataset, Episode
from policyrt.stopping import STOP, StopRequest

from .experts import make_expert


@dataclass(frozen=True)
class CollectConfig:
    env_id: str = "InvertedPendulum-v5"
    expert: str = "lqr"
    episodes: int = 50
    action_noise: tuple[float, ...] = (0.0,)
    """Std of Gaussian noise added to the applied action. Several levels mix dataset quality:
    episode i uses level i mod len(levels)."""
    random_mix: tuple[float, ...] = (0.0,)
    """Weight w of a uniformly random action blended into the expert's: applied = (1-w) expert +
    w random (+ noise). Episode i uses level i mod len(levels). Unlike zero-mean noise, this makes
    the average behaviour of a poor episode differ from the expert's (a weaker controller), which is
    what a return-conditioned policy can learn to reproduce when asked for a lower return."""
    expert_gain: tuple[float, ...] = (1.0,)
    """Scale g of the expert's action: g < 1 is a weaker, deterministic controller (for the pendulums
    one that lets the pole fall; for Reacher one that reaches slowly). Episode i uses level
    i mod len(levels). The poor behaviour it gives is a function of the state, so a policy can
    reproduce it from its own history when a low return is commanded."""
    format: str = "minari"
    """minari (readable by minari.load_dataset) or npz."""
    seed: int = 0


def run_episode(env, expert, rng: np.random.Generator, noise: float, seed: int | None, mix: float = 0.0,
                gain: float = 1.0) -> Episode:
    obs, _ = env.reset(seed=seed)
    low, high = env.action_space.low, env.action_space.high
    rows: dict[str, list] = {k: [] for k in ("o", "a", "e", "r", "term", "trunc")}
    while True:
        clean = expert.act(env)
        scaled = clean if gain == 1.0 else gain * clean
        blended = scaled if mix == 0.0 else (1.0 - mix) * scaled + mix * rng.uniform(low, high)
        applied = np.clip(blended + noise * rng.standard_normal(clean.shape), low, high).astype(np.float32)
        next_obs, reward, terminated, truncated, _ = env.step(applied)
        for key, value in zip(rows, (obs, applied, clean, reward, terminated, truncated)):
            rows[key].append(value)
        obs = next_obs
        if terminated or truncated:
            break
    return Episode(
        observations=np.asarray(rows["o"], np.float32),
        actions=np.asarray(rows["a"], np.float32),
        expert_actions=np.asarray(rows["e"], np.float32),
        rewards=np.asarray(rows["r"], np.float32),
        terminations=np.asarray(rows["term"], bool),
        truncations=np.asarray(rows["trunc"], bool),
        final_observation=np.asarray(obs, np.float32),
    )


def collect(cfg: CollectConfig, out: Path | None = None, progress: bool = True, command: str | None = None,
            stop: StopRequest = STOP) -> Dataset | None:
    """The dataset (saved to `out` when given); after a stop request the episodes played until
    then, or None, with nothing written, if it came before the first one ended."""
    import gymnasium as gym
    from tqdm import tqdm

    env = gym.make(cfg.env_id)
    expert = make_expert(cfg.expert, env)
    rng = np.random.default_rng(cfg.seed)
    episodes = []
    low, high = env.action_space.low, env.action_space.high  # read before close()
    bar = tqdm(range(cfg.episodes), desc=f"collect {cfg.env_id}", unit="ep", disable=not progress)
    for i in bar:
        if stop.requested:
            break
        noise = cfg.action_noise[i % len(cfg.action_noise)]
        mix = cfg.random_mix[i % len(cfg.random_mix)]
        gain = cfg.expert_gain[i % len(cfg.expert_gain)]
        episodes.append(run_episode(env, expert, rng, noise, seed=cfg.seed * 100_003 + i, mix=mix, gain=gain))
        bar.set_postfix(ret=f"{episodes[-1].total_return:.0f}")
    bar.close()
    env.close()
    if not episodes and stop.requested:
        return None
    meta = {
        "env_id": cfg.env_id,
        "expert": cfg.expert,
        "action_noise": list(cfg.action_noise),
        "random_mix": list(cfg.random_mix),
        "expert_gain": list(cfg.expert_gain),
        "seed": cfg.seed,
        "command": command,
        "episodes": len(episodes),
        "action_low": low.tolist(),
        "action_high": high.tolist(),
        "control_dt": float(env.unwrapped.dt),
        "returns": {"min": float(min(e.total_return for e in episodes)), "max": float(max(e.total_return for e in episodes))},
    }
    if len(episodes) < cfg.episodes:  # stopped: a partial dataset says so
        meta["interrupted"] = {"by": stop.reason, "episodes_requested": cfg.episodes}
    dataset = Dataset(episodes=episodes, meta=meta)
    if out is not None:
        dataset.save(out, cfg.format)
    return dataset


def summary(dataset: Dataset) -> str:
    returns = dataset.returns()
    steps = sum(len(e) for e in dataset.episodes)
    return (
        f"{len(dataset.episodes)} episodes, {steps} steps; return min {returns.min():.1f} / "
        f"median {np.median(returns):.1f} / max {returns.max():.1f}"
    )
