"""The sim server with P environments behind one endpoint: batched lockstep (OBS_BATCH/ACT_BATCH).

Each tick the server sends one OBS_BATCH with a row per environment ("slot") and waits for the
ACT_BATCH answering it, then steps every running slot with its action row. Slots end and restart
on their own, like the single-environment server spread over P lanes: a slot whose episode ends
sends its terminal row (TERMINATED/TRUNCATED; its action row is ignored), and on the next tick
either starts the next episode (a RESET row) or, once every requested episode has been handed
out, goes IDLE. Episodes are numbered over the whole run and episode k always resets with
`episode_seed(seed, k)`, so the same episodes are played whatever P is and whichever slot gets
them. Exactly `episodes` episodes are started, so none is lost or counted twice.
"""

from __future__ import annotations

import heapq
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from policyrt.link import Link
from policyrt.protocol import Encoder, Message, MsgType, SlotFlag, Spec
from policyrt.timing import now_ns

from .server import _ESTOP, EpisodeStats, _LockstepServer, episode_seed

log = logging.getLogger(__name__)

_RESET, _IDLE = int(SlotFlag.RESET), int(SlotFlag.IDLE)
_TERMINATED, _TRUNCATED = int(SlotFlag.TERMINATED), int(SlotFlag.TRUNCATED)
_ENDED = _TERMINATED | _TRUNCATED
_WORK_NONE, _WORK_STEP, _WORK_RESET = 0, 1, 2


@dataclass
class _Running:
    """The episode a slot is playing."""

    index: int
    seed: int
    ep_return: float = 0.0
    length: int = 0


class BatchedLockstepServer(_LockstepServer):
    """Reuses the single server's session handling (HELLO, BYE, ESTOP, silence, stale ACTs);
    replaces what one tick does. `_step` returns True once every requested episode ended."""

    act_type = MsgType.ACT_BATCH

    def __init__(self, envs: list, spec: Spec, link: Link, seed: int, spin_us: int, env_threads: int = 1):
        super().__init__(envs[0], spec, link, seed, spin_us, seeding="episode")
        n = len(envs)
        self.envs = envs
        link.num_envs = n
        self.enc = Encoder(obs_dim=spec.obs_dim, act_dim=spec.act_dim, num_envs=n)
        # The next OBS_BATCH, assembled in place; its flags also tell `_step` what each slot did.
        self.obs = np.zeros((n, spec.obs_dim), np.float32)
        self.rewards = np.zeros(n, np.float32)
        self.flags = np.zeros(n, np.uint32)
        self.slot_episode = np.zeros(n, np.uint32)
        self.slot_step = np.zeros(n, np.uint32)
        self.running: list[_Running | None] = [None] * n
        self.quota: int | None = None
        self.next_episode = 0
        self.redo: list[int] = []  # indices of abandoned episodes, replayed before new ones
        self.work = np.zeros(n, np.uint8)  # what each slot does this tick (_WORK_*)
        self.actions = np.zeros((n, *self.action.shape), self.action.dtype)
        # In lockstep the controller waits while the server steps, so on a 2-core machine a second
        # thread has a core to itself for half of the environments.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="env-step") if env_threads > 1 and n > 1 else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def run(self, episodes: int | None, timeout_s: float, connect_timeout_s: float | None) -> tuple[str, str]:
        self.quota = episodes
        return super().run(episodes, timeout_s, connect_timeout_s)

    def _awaited(self) -> str:
        live = sum(r is not None for r in self.running)
        return (
            f"the ACT_BATCH to OBS_BATCH seq {self.pending} ({live} of {len(self.envs)} slots running; "
            f"a controller that predates batched sessions cannot answer OBS_BATCH)"
        )

    def _abandon_episode(self) -> None:
        """A controller that starts over or leaves abandons every running episode; their indices
        are played again (same seeds) if the session goes on."""
        for i, run in enumerate(self.running):
            if run is not None:
                self.aborted += run.length > 0
                heapq.heappush(self.redo, run.index)
                self.running[i] = None

    def _reset(self) -> None:
        """Session start: every slot starts an episode (or idles) and the first batch goes out."""
        for i in range(len(self.envs)):
            self._start_slot(i)
        self._send_batch()

    def _take_episode(self) -> int | None:
        if self.redo:
            return heapq.heappop(self.redo)
        if self.quota is not None and self.next_episode >= self.quota:
            return None
        self.next_episode += 1
        return self.next_episode - 1

    def _start_slot(self, i: int) -> None:
        self._assign_slot(i)
        if self.running[i] is not None:
            obs, _ = self.envs[i].reset(seed=self.running[i].seed)
            self.obs[i] = np.ravel(obs)

    def _assign_slot(self, i: int) -> None:
        """The slot's next episode (its RESET row; the reset itself is the caller's) or IDLE."""
        index = self._take_episode()
        self.rewards[i] = 0.0
        if index is None:
            self.running[i] = None
            self.obs[i] = 0.0
            self.flags[i], self.slot_episode[i], self.slot_step[i] = _IDLE, 0, 0
            return
        self.running[i] = _Running(index, episode_seed(self.seed, index))
        self.flags[i], self.slot_episode[i], self.slot_step[i] = _RESET, index, 0

    def _send_batch(self) -> None:
        frame = self.enc.obs_batch(self.obs, self.rewards, self.flags, self.slot_episode, self.slot_step)
        self.pending = self.enc.last_seq
        self.t_sent = now_ns()
        self.link.send(frame)  # a failed send shows up as the controller's silence

    def _step(self, act: Message) -> bool:
        """One tick in three phases: decide each slot's work in slot order (which episode a
        restarting slot takes must not depend on timing), do the environment work -- resets and
        steps, the expensive part -- on `env_threads` threads, then account in slot order."""
        t_act = now_ns()
        if (act.slots[0] & _ESTOP).any():
            self._set_estop(True)
        for i in range(len(self.envs)):
            if self.flags[i] & _ENDED:  # its terminal row went out last tick: move on
                self._assign_slot(i)
                self.work[i] = _WORK_RESET if self.running[i] is not None else _WORK_NONE
            else:
                self.work[i] = _WORK_STEP if self.running[i] is not None else _WORK_NONE
        self.actions[:] = self.safe_action if self.estop else act.values.reshape(self.actions.shape)
        if self._pool is None:
            self._env_work(0, len(self.envs))
        else:  # MuJoCo's mj_step releases the GIL: the physics of the two halves overlaps
            half = (len(self.envs) + 1) // 2
            other = self._pool.submit(self._env_work, half, len(self.envs))
            self._env_work(0, half)
            other.result()
        for i in range(len(self.envs)):
            if self.work[i] == _WORK_STEP:
                self._account_step(i)
        self.times.record(t_act - self.t_sent, now_ns() - t_act)
        self._send_batch()
        return self.quota is not None and len(self.episodes) >= self.quota

    def _env_work(self, lo: int, hi: int) -> None:
        """Resets and steps of slots lo..hi-1; each writes only its own rows."""
        for i in range(lo, hi):
            if self.work[i] == _WORK_STEP:
                obs, reward, terminated, truncated, _ = self.envs[i].step(self.actions[i])
                self.obs[i] = np.ravel(obs)
                self.rewards[i] = reward
                self.flags[i] = (_TERMINATED if terminated else 0) | (_TRUNCATED if truncated else 0)
            elif self.work[i] == _WORK_RESET:
                obs, _ = self.envs[i].reset(seed=self.running[i].seed)
                self.obs[i] = np.ravel(obs)

    def _account_step(self, i: int) -> None:
        run = self.running[i]
        run.length += 1
        run.ep_return += float(self.rewards[i])
        self.steps += 1
        self.slot_step[i] = run.length
        if self.flags[i] & _ENDED:
            self._end_episode(i, run, bool(self.flags[i] & _TERMINATED), bool(self.flags[i] & _TRUNCATED))

    def _end_episode(self, slot: int, run: _Running, terminated: bool, truncated: bool) -> None:
        self.running[slot] = None
        self.episodes.append(
            EpisodeStats(run.index, run.ep_return, run.length, terminated, truncated, slot, run.seed)
        )
        if self.on_episode is not None:
            self.on_episode(self.episodes[-1])
        log.info(
            "episode %d (slot %d): return %.2f over %d steps", run.index, slot, run.ep_return, run.length
        )
