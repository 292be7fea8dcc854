"""The batched lockstep loop: one OBS_BATCH in, one Session step of batch P, one ACT_BATCH out.

Used when the robot's SPEC announces num_envs = P > 1 (docs/PROTOCOL.md, section 10). Each row is
one environment ("slot") with its own flags: a RESET row resets only that slot of the session, a
terminal row closes that slot's episode, an IDLE row runs nothing. Unlike the single-environment
loop, every OBS_BATCH is answered (the robot waits for it), but the action rows of terminal and
idle slots are ignored by the robot, so only live rows count as environment steps, advance
`prev_action` and can count as fallbacks.

The session still steps all P rows each tick: a batched graph has no cheaper way to skip rows, and
a slot that was terminal or idle is reset before its next live row, so what its state absorbed
in between never reaches an action.

Board-side module: standard library, numpy and pyzmq only, Python 3.10.
"""

from __future__ import annotations

import logging

import numpy as np

from policyrt.protocol import ActFlag, Encoder, MsgType, ProtocolError, SlotFlag
from policyrt.timing import now_ns

from .loop import EpisodeSummary, _Lockstep

log = logging.getLogger(__name__)

_RESET = int(SlotFlag.RESET)
_TERMINATED, _TRUNCATED = int(SlotFlag.TERMINATED), int(SlotFlag.TRUNCATED)
_DONE = int(SlotFlag.TERMINATED | SlotFlag.TRUNCATED)
_NOT_LIVE = _DONE | int(SlotFlag.IDLE)
_FALLBACK = int(ActFlag.FALLBACK)
_FALLBACK_ESTOP = int(ActFlag.FALLBACK | ActFlag.ESTOP)


class BatchedLockstep(_Lockstep):
    """`_Lockstep` with [P, ...] buffers; reuses its e-stop handling and stage timer."""

    def __init__(self, session, link, low, high, errors, spin_us: int, num_envs: int):
        super().__init__(session, link, low, high, errors, spin_us)
        n, act_dim = num_envs, len(low)
        self.num_envs = n
        self.enc = Encoder(act_dim=act_dim, num_envs=n)
        self.obs = np.zeros((n, session.manifest.obs_dim), np.float32)
        self.actions = np.zeros((n, act_dim), np.float32)
        self.applied = np.zeros((n, act_dim), np.float32)  # per slot: what the robot applied last
        self.act_flags = np.zeros(n, np.uint32)
        self.ep_returns = np.zeros(n, np.float64)
        self.ep_lens = np.zeros(n, np.int64)
        self._env_steps = 0

    @property
    def env_steps(self) -> int:
        return self._env_steps

    def run(self, episodes: int | None, timeout_s: float) -> tuple[str, str]:
        link, errors = self.link, self.errors
        t_prev = now_ns()
        try:
            while True:
                try:
                    msg = link.recv(timeout_s, self.spin_ns)
                except ProtocolError as exc:
                    errors.add(exc)
                    continue
                if msg is None:
                    return "robot_lost", (
                        f"no message from the robot at {link.endpoint} for {timeout_s:g} s "
                        f"after {self.ticks} ticks: it stopped or the link broke"
                    )
                mtype = msg.type
                if mtype is MsgType.OBS_BATCH:
                    flags = msg.slots[0]
                    if (flags & _DONE).any():
                        self._end_episodes(msg)
                        if episodes is not None and len(self.episodes) >= episodes:
                            link.send(self.enc.control(MsgType.BYE))
                            return "episodes_done", f"{len(self.episodes)} episode(s) as asked"
                    t_prev = self._tick_batch(msg, flags, t_prev)
                elif mtype is MsgType.ESTOP:
                    self._set_estop(True)
                elif mtype is MsgType.CLEAR:
                    self._set_estop(False)
                elif mtype is MsgType.BYE:
                    return "robot_left", f"the robot ended the session after {self.ticks} ticks"
                elif mtype is not MsgType.HEARTBEAT:
                    errors.add(ProtocolError("unexpected", f"{mtype.name} from the robot in a batched session"))
        except KeyboardInterrupt:
            link.send(self.enc.control(MsgType.BYE))
            return "interrupted", f"Ctrl-C after {self.ticks} ticks"

    def _tick_batch(self, msg, flags: np.ndarray, t_prev: int) -> int:
        t_obs = now_ns()
        live = (flags & _NOT_LIVE) == 0
        reset = (flags & _RESET) != 0
        if reset.any():
            self.session.reset(reset)
            self.applied[reset] = 0.0
            self.ep_returns[reset] = 0.0
            self.ep_lens[reset] = 0
        rewards = msg.rewards
        self.ep_returns[live] += rewards[live]  # a RESET row's reward is 0
        np.copyto(self.obs, msg.obs)
        raw = self.session.step(self.obs, rewards, prev_action=self.applied)
        t_infer = now_ns()

        actions, act_flags = self.actions, self.act_flags
        np.minimum(raw, self.high, out=actions)
        np.maximum(actions, self.low, out=actions)
        act_flags[:] = 0
        finite = np.isfinite(actions).all(axis=1)
        if not finite.all():
            # Every non-finite row is replaced, live or not: one NaN would get the whole frame
            # rejected by the robot. Only live rows count, as only they reach an environment.
            actions[~finite] = self.fallback
            act_flags[~finite] = _FALLBACK
            bad_live = int((~finite & live).sum())
            if bad_live and not self.nonfinite:
                log.warning("the policy produced a non-finite action: sent the fallback action instead")
            self.nonfinite += bad_live
            self.fallbacks += bad_live
        if self.estop:
            actions[:] = self.fallback
            self.fallbacks += int((live & (act_flags == 0)).sum())
            act_flags[:] = _FALLBACK_ESTOP
        t_filter = now_ns()

        self.link.send(self.enc.act_batch(actions, act_flags, ack=msg.seq))
        self.applied[live] = actions[live]
        t_sent = now_ns()

        self.ticks += 1
        self._env_steps += int(live.sum())
        self.ep_lens[live] += 1
        self.times.record(
            t_obs - t_prev, t_infer - t_obs, t_filter - t_infer, t_sent - t_filter, t_sent - t_obs
        )
        return t_sent

    def _end_episodes(self, msg) -> None:
        flags, episodes = msg.slots[0], msg.slots[1]
        rewards = msg.rewards
        for slot in np.flatnonzero(flags & _DONE):
            summary = EpisodeSummary(
                index=int(episodes[slot]),
                episode_return=float(self.ep_returns[slot] + rewards[slot]),
                length=int(self.ep_lens[slot]),
                terminated=bool(flags[slot] & _TERMINATED),
                truncated=bool(flags[slot] & _TRUNCATED),
                slot=int(slot),
            )
            self.episodes.append(summary)
            log.info(
                "episode %d (slot %d): return %.2f over %d steps",
                summary.index,
                summary.slot,
                summary.episode_return,
                summary.length,
            )
            self.ep_returns[slot], self.ep_lens[slot] = 0.0, 0
