"""Episode recording: what a real-time controller saw and did, as a dataset training can read.

One row per new observation a robot slot was answered for (ticks that re-used an observation add
no row, so rows follow the robot's steps, not the controller's ticks): the observation, the
action sent in answer (after the safety chain: what the robot executed from then on), the
policy's raw output (stored as `expert_actions`, the dataset's second action column), and the
reward. Rewards arrive one step late (an OBS carries the reward of the step that led to it), so
row t gets the reward that came with row t+1's observation. Observations the conflated stream
dropped are missing from the rows, as they were missing for the policy. An episode ends with its terminal OBS (its flags become the last row's
terminated/truncated); an episode that is abandoned (the robot restarted, the run stopped, the
episode number changed because the terminal OBS was conflated away) ends truncated.

Rows go into per-slot buffers allocated once (`max_steps` rows); finished episodes are kept as
copies and the dataset is written at `on_close()`. The rows come from the controller's tick record
(controllers/core.py), handed to `on_tick` after every tick:

- `npz` (default; numpy only, so it runs on the board): `DIR/episodes.npz` + `DIR/dataset.json`,
  the layout of `policyrt sim collect --format npz`, which `policyrt train --data DIR` reads;
- `minari`: the same episodes as a Minari dataset (needs the sim extra and `minari`; for a
  workstation, not a board).
Both are written by policyrt/episodes.py, the one definition of the dataset.

Board-side module (for the npz format): standard library and numpy only, Python 3.10.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from policyrt.episodes import FORMATS, Dataset, Episode
from policyrt.protocol import ObsFlag

log = logging.getLogger(__name__)

_TERMINATED, _TRUNCATED = int(ObsFlag.TERMINATED), int(ObsFlag.TRUNCATED)
_DONE = _TERMINATED | _TRUNCATED


class EpisodeRecorder:
    def __init__(self, out_dir, *, fmt: str = "npz", max_steps: int = 100_000, command: str = ""):
        if fmt not in FORMATS:
            raise ValueError(f"unknown dataset format {fmt!r}; use one of {', '.join(FORMATS)}")
        self.out_dir, self.fmt, self.max_steps, self.command = Path(out_dir), fmt, max_steps, command
        self.episodes: list[Episode] = []  # finished episodes
        self._run = None  # the controller's RunInfo, from on_start

    def on_start(self, run, record) -> None:
        """Allocate the per-slot rows (run: controllers.core.RunInfo)."""
        b, n, a, cap = run.batch, run.obs_dim, run.act_dim, self.max_steps
        self._run = run
        self.obs = np.zeros((b, cap, n), np.float32)
        self.act = np.zeros((b, cap, a), np.float32)
        self.raw = np.zeros((b, cap, a), np.float32)
        self.rew = np.zeros((b, cap + 1), np.float32)  # rew[k]: reward that came with row k's obs
        self.len = np.zeros(b, np.int64)

    def on_tick(self, record) -> None:
        """After a tick's send (record: controllers.core.TickRecord): append rows, close episodes."""
        for i in range(len(record.live)):
            fresh = record.new_obs[i]
            if record.reset[i] and self.len[i]:
                self._finish(i, terminated=False, truncated=True, final_obs=None, final_reward=0.0)
            if record.live[i] and fresh:
                k = self.len[i]
                if k == self.max_steps:
                    self._finish(i, terminated=False, truncated=True, final_obs=None, final_reward=0.0)
                    k = 0
                self.obs[i, k] = record.obs[i]
                self.act[i, k] = record.actions[i]
                self.raw[i, k] = record.raw[i] if record.stepped else np.nan
                self.rew[i, k] = record.rewards[i]
                self.len[i] = k + 1
            elif fresh and record.obs_flags[i] & _DONE and self.len[i]:  # the terminal OBS
                flags = int(record.obs_flags[i])
                self._finish(i, bool(flags & _TERMINATED), bool(flags & _TRUNCATED), record.obs[i],
                             float(record.rewards[i]))
            elif not record.connected[i] and self.len[i]:  # the robot left or restarts
                self._finish(i, terminated=False, truncated=True, final_obs=None, final_reward=0.0)

    def _finish(self, i: int, terminated: bool, truncated: bool, final_obs, final_reward: float) -> None:
        n = int(self.len[i])
        self.len[i] = 0
        rewards = np.empty(n, np.float32)
        rewards[:-1] = self.rew[i, 1:n]  # row t's reward arrived with row t+1's observation
        rewards[-1] = final_reward
        term = np.zeros(n, bool)
        trunc = np.zeros(n, bool)
        term[-1], trunc[-1] = terminated, truncated or not terminated
        self.episodes.append(
            Episode(
                observations=self.obs[i, :n].copy(),
                actions=self.act[i, :n].copy(),
                expert_actions=self.raw[i, :n].copy(),
                rewards=rewards,
                terminations=term,
                truncations=trunc,
                final_observation=(
                    self.obs[i, n - 1] if final_obs is None else np.asarray(final_obs, np.float32)
                ).copy(),
            )
        )

    def on_close(self) -> Path | None:
        """Close the running episodes (truncated) and write the dataset; returns its directory."""
        c = self._run
        if c is None:
            return None
        for i in range(c.batch):
            if self.len[i]:
                self._finish(i, terminated=False, truncated=True, final_obs=None, final_reward=0.0)
        if not self.episodes:
            log.warning("episode recorder: no episode to write")
            return None
        robots = c.robot_names()
        low, high = c.action_low[0], c.action_high[0]
        meta = {
            "env_id": robots[0] if robots else "",
            "source": "policyrt real-time controller",
            "expert": "the policy's raw output (expert_actions); actions are what the safety chain sent",
            "command": self.command,
            "rate_hz": c.rate_hz,
            "robots": list(c.robots),
            "obs_dim": c.obs_dim,
            "act_dim": c.act_dim,
            "action_low": low.tolist(),
            "action_high": high.tolist(),
            "episodes": len(self.episodes),
            "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        Dataset(episodes=self.episodes, meta=meta).save(self.out_dir, fmt=self.fmt)
        log.info(
            "episode recorder: wrote %d episode(s) to %s (%s)", len(self.episodes), self.out_dir, self.fmt
        )
        return self.out_dir
