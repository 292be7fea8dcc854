"""The lockstep controller loop: one OBS in, one Session step, one ACT out.

The robot side (sim server or robot bridge) binds; this loop connects, says HELLO, checks the
robot's SPEC against the bundle, then answers every non-terminal OBS with the action of the
policy, clipped to the action bounds both sides agree on. Malformed messages are counted per kind
and skipped; the loop ends on the requested number of episodes, on the robot's BYE, when the
robot falls silent for `robot_timeout_s`, or on Ctrl-C -- always with a result, never a hang.
A robot whose SPEC announces num_envs > 1 is driven by the batched loop (controllers/batched_loop.py)
with one session of that batch size.

Board-side module: standard library, numpy and pyzmq only, Python 3.10.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from policyrt.link import Link
from policyrt.protocol import ActFlag, Encoder, ErrorTally, MsgType, ObsFlag, ProtocolError, Spec
from policyrt.timing import StageTimes, now_ns

log = logging.getLogger(__name__)

STAGES = ("receive", "infer", "filter", "send", "respond")
# receive: from the end of the previous tick until a valid OBS is decoded (includes the robot's
#          own work and both transport legs in lockstep);
# respond: OBS decoded -> ACT handed to ZeroMQ, i.e. the controller's whole share of a round trip.

# Plain ints: `int & IntFlag` goes through the enum machinery, ~1 us each on the hot path.
_RESET = int(ObsFlag.RESET)
_DONE = int(ObsFlag.TERMINATED | ObsFlag.TRUNCATED)
_FALLBACK = int(ActFlag.FALLBACK)
_FALLBACK_ESTOP = int(ActFlag.FALLBACK | ActFlag.ESTOP)


class SpecMismatchError(ValueError):
    """The robot's SPEC does not fit the bundle's manifest (dims or bounds)."""


@dataclass(frozen=True)
class EpisodeSummary:
    index: int  # the robot's episode counter
    episode_return: float  # sum of the rewards the robot reported
    length: int  # OBS answered in the episode
    terminated: bool
    truncated: bool
    slot: int = 0  # the robot's environment slot (batched sessions)


@dataclass(frozen=True)
class LockstepResult:
    stop_reason: str  # "episodes_done" | "robot_left" | "robot_lost" | "interrupted"
    detail: str
    ticks: int  # ACTs sent
    episodes: tuple[EpisodeSummary, ...]
    errors: dict[str, int]  # protocol errors per kind
    fallbacks: int  # ACTs sent with the fallback action instead of the policy's
    nonfinite_actions: int  # policy outputs with NaN/inf (each replaced by the fallback)
    timing: dict[str, dict[str, float]]  # stage -> p50/p99/max in microseconds
    spec: Spec | None = field(default=None, repr=False)
    num_envs: int = 1  # environments behind the robot's endpoint (= the session's batch size)
    env_steps: int = 0  # observations answered (= ticks for one environment)
    stage_times: StageTimes | None = field(default=None, repr=False, compare=False)  # raw, for reports

    def to_dict(self) -> dict:
        return {
            "stop_reason": self.stop_reason,
            "detail": self.detail,
            "ticks": self.ticks,
            "num_envs": self.num_envs,
            "env_steps": self.env_steps,
            "episodes": [vars(e) for e in self.episodes],
            "errors": dict(self.errors),
            "fallbacks": self.fallbacks,
            "nonfinite_actions": self.nonfinite_actions,
            "timing": self.timing,
        }


def check_spec(spec: Spec, manifest, endpoint: str) -> tuple[np.ndarray, np.ndarray]:
    """Dims must match exactly; the action bounds used are the intersection of the robot's and
    the bundle's, since either side may be the stricter one."""
    if (spec.obs_dim, spec.act_dim) != (manifest.obs_dim, manifest.act_dim):
        raise SpecMismatchError(
            f"robot at {endpoint} ({spec.robot or 'unnamed'}) announces obs_dim={spec.obs_dim}, "
            f"act_dim={spec.act_dim}, but the bundle expects obs_dim={manifest.obs_dim}, "
            f"act_dim={manifest.act_dim}"
        )
    robot_low, robot_high = spec.bounds()
    low = np.maximum(robot_low, _bound(manifest, "action_low", -np.inf, spec.act_dim))
    high = np.minimum(robot_high, _bound(manifest, "action_high", np.inf, spec.act_dim))
    if (low > high).any():
        raise SpecMismatchError(
            f"action bounds do not overlap: robot [{robot_low}, {robot_high}], "
            f"bundle [{manifest.action_low}, {manifest.action_high}]"
        )
    rate = getattr(manifest, "control_rate_hz", None)
    if rate and spec.control_rate_hz and abs(rate - spec.control_rate_hz) > 1e-3 * rate:
        log.warning("robot runs at %.3g Hz, the bundle recommends %.3g Hz", spec.control_rate_hz, rate)
    return low.astype(np.float32), high.astype(np.float32)


def _bound(manifest, name: str, default: float, dim: int) -> np.ndarray:
    value = getattr(manifest, name, None)
    return np.full(dim, default, np.float32) if value is None else np.asarray(value, np.float32)


def handshake(link: Link, timeout_s: float, errors: ErrorTally) -> Spec:
    """Say HELLO once, then wait up to timeout_s for the SPEC; frames before it are counted and
    skipped. HELLO is not repeated: ZeroMQ delivers it once the robot side is up, and a second
    HELLO would make the robot start the session over."""
    if not link.send(Encoder().control(MsgType.HELLO)):
        raise TimeoutError(f"could not send HELLO to {link.endpoint}")
    deadline = now_ns() + int(timeout_s * 1e9)
    while True:
        try:
            msg = link.recv(max(0, deadline - now_ns()) / 1e9)
        except ProtocolError as exc:
            errors.add(exc)
            continue
        if msg is None:
            raise TimeoutError(
                f"no SPEC from {link.endpoint} within {timeout_s:g} s: is the robot side running "
                f"(e.g. `policyrt sim serve --env ENV --bind {link.endpoint}`)?"
            )
        if msg.type is MsgType.SPEC:
            return msg.spec
        errors.add(ProtocolError("unexpected", f"{msg.type.name} before SPEC"))


def run_lockstep(
    session,
    connect: str,
    episodes: int | None = None,
    spin_us: int = 0,
    robot_timeout_s: float = 10.0,
    context: zmq.Context | None = None,
    make_session: Callable[[int], Any] | None = None,
) -> LockstepResult:
    """Control the robot at `connect` with `session` until `episodes` episodes ended (None: until
    the robot leaves), the robot is silent for `robot_timeout_s`, or Ctrl-C.

    spin_us: busy-poll this long for the next OBS before blocking; trades a CPU core for the
    tens of microseconds a blocking wake-up costs. make_session(batch_size): called when the
    robot announces a number of environments other than `session.batch_size` (without it, that
    is a SpecMismatchError). Raises SpecMismatchError when the robot's SPEC does not fit
    `session.manifest`, TimeoutError when no SPEC arrives within robot_timeout_s.
    """
    manifest = session.manifest
    errors = ErrorTally(log, "controller")
    with Link(connect, bind=False, context=context) as link:
        spec = handshake(link, robot_timeout_s, errors)
        try:
            low, high = check_spec(spec, manifest, connect)
            session = _session_for(spec, session, make_session, connect)
        except SpecMismatchError:
            link.send(Encoder().control(MsgType.BYE))  # let the robot end now, not at its timeout
            raise
        link.obs_dim, link.act_dim, link.num_envs = spec.obs_dim, spec.act_dim, spec.num_envs
        log.info(
            "connected to %s (%s): obs_dim=%d act_dim=%d%s",
            connect,
            spec.robot or "robot",
            spec.obs_dim,
            spec.act_dim,
            f", {spec.num_envs} environments" if spec.num_envs > 1 else "",
        )
        if spec.num_envs == 1:
            loop = _Lockstep(session, link, low, high, errors, spin_us)
        else:
            from .batched_loop import BatchedLockstep

            loop = BatchedLockstep(session, link, low, high, errors, spin_us, spec.num_envs)
        gc.collect()
        gc.freeze()  # the objects alive now are never garbage: keep collections off their backs
        try:
            stop, detail = loop.run(episodes, robot_timeout_s)
        finally:
            gc.unfreeze()
    return LockstepResult(
        stop_reason=stop,
        detail=detail,
        ticks=loop.ticks,
        episodes=tuple(loop.episodes),
        errors=dict(errors.counts),
        fallbacks=loop.fallbacks,
        nonfinite_actions=loop.nonfinite,
        timing=loop.times.summary(),
        spec=spec,
        num_envs=spec.num_envs,
        env_steps=loop.env_steps,
        stage_times=loop.times,
    )


def _session_for(spec: Spec, session, make_session, endpoint: str):
    """The session to drive the robot with: one slot per environment the robot announced."""
    if spec.num_envs == session.batch_size:
        return session
    if make_session is None:
        raise SpecMismatchError(
            f"robot at {endpoint} runs {spec.num_envs} environments, the session has batch size "
            f"{session.batch_size}: load it with batch_size={spec.num_envs}"
        )
    log.info("robot runs %d environments: loading a session of batch %d", spec.num_envs, spec.num_envs)
    return make_session(spec.num_envs)


class _Lockstep:
    """The loop's state: preallocated buffers, counters and the stage timer."""

    def __init__(self, session, link: Link, low, high, errors: ErrorTally, spin_us: int):
        self.session, self.link, self.errors = session, link, errors
        self.low, self.high = low, high
        self.spin_ns = max(0, int(spin_us * 1000))
        act_dim = len(low)
        self.enc = Encoder(act_dim=act_dim)
        self.action = np.zeros(act_dim, np.float32)
        self.applied = np.zeros(act_dim, np.float32)  # what the robot got last tick: prev_action
        # Zero is the safe action when it lies within bounds; otherwise the bound nearest to it.
        self.fallback = np.clip(np.zeros(act_dim, np.float32), low, high)
        self.times = StageTimes(STAGES)
        self.episodes: list[EpisodeSummary] = []
        self.ticks = self.fallbacks = self.nonfinite = 0
        self.estop = False
        self.ep_return, self.ep_len = 0.0, 0

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
                if mtype is MsgType.OBS:
                    if msg.flags & _DONE:
                        self._end_episode(msg)
                        if episodes is not None and len(self.episodes) >= episodes:
                            link.send(self.enc.control(MsgType.BYE))
                            return "episodes_done", f"{len(self.episodes)} episode(s) as asked"
                        continue
                    t_prev = self._tick(msg, t_prev)
                elif mtype is MsgType.ESTOP:
                    self._set_estop(True)
                elif mtype is MsgType.CLEAR:
                    self._set_estop(False)
                elif mtype is MsgType.BYE:
                    return "robot_left", f"the robot ended the session after {self.ticks} ticks"
                elif mtype is not MsgType.HEARTBEAT:
                    errors.add(ProtocolError("unexpected", f"{mtype.name} from the robot during a session"))
        except KeyboardInterrupt:
            link.send(self.enc.control(MsgType.BYE))
            return "interrupted", f"Ctrl-C after {self.ticks} ticks"

    def _tick(self, msg, t_prev: int) -> int:
        t_obs = now_ns()
        reward = msg.reward
        if msg.flags & _RESET:
            self.session.reset()
            self.applied[:] = 0.0
            self.ep_return, self.ep_len = 0.0, 0
        else:
            self.ep_return += reward
        raw = self.session.step(msg.obs, reward, prev_action=self.applied)
        t_infer = now_ns()

        flags = 0
        # minimum/maximum rather than np.clip: same result (NaN propagates to the check below),
        # a third of the cost.
        np.minimum(raw, self.high, out=self.action)
        np.maximum(self.action, self.low, out=self.action)
        finite = np.isfinite(self.action).all()
        if not finite:
            self.nonfinite += 1
            if self.nonfinite == 1:
                log.warning("the policy produced a non-finite action: sent the fallback action instead")
        if self.estop or not finite:
            self.action[:] = self.fallback
            flags = _FALLBACK_ESTOP if self.estop else _FALLBACK
            self.fallbacks += 1
        t_filter = now_ns()

        self.link.send(
            self.enc.act(self.action, ack=msg.seq, flags=flags, episode=msg.episode, step=msg.step)
        )
        self.applied[:] = self.action
        t_sent = now_ns()

        self.ticks += 1
        self.ep_len += 1
        self.times.record(
            t_obs - t_prev, t_infer - t_obs, t_filter - t_infer, t_sent - t_filter, t_sent - t_obs
        )
        return t_sent

    @property
    def env_steps(self) -> int:
        return self.ticks

    def _end_episode(self, msg) -> None:
        self.ep_return += msg.reward
        summary = EpisodeSummary(
            index=msg.episode,
            episode_return=float(self.ep_return),
            length=self.ep_len,
            terminated=bool(msg.flags & ObsFlag.TERMINATED),
            truncated=bool(msg.flags & ObsFlag.TRUNCATED),
        )
        self.episodes.append(summary)
        log.info(
            "episode %d: return %.2f over %d steps", summary.index, summary.episode_return, summary.length
        )
        self.ep_return, self.ep_len = 0.0, 0

    def _set_estop(self, on: bool) -> None:
        if on != self.estop:
            log.warning("emergency stop %s by the robot", "latched" if on else "cleared")
        self.estop = on


def format_summary(result: LockstepResult) -> str:
    """Human-readable end-of-run report: why it stopped, episodes, errors, stage latencies."""
    from policyrt.timing import format_table

    lines = [
        f"stopped: {result.stop_reason} ({result.detail}); {result.ticks} ticks, {result.fallbacks} fallbacks"
    ]
    if result.episodes:
        rets = np.array([e.episode_return for e in result.episodes])
        lens = np.array([e.length for e in result.episodes])
        lines.append(
            f"episodes: {len(rets)}, return mean {rets.mean():.2f} (min {rets.min():.2f}, max {rets.max():.2f}), "
            f"length mean {lens.mean():.1f}"
        )
    errs = ", ".join(f"{k}={v}" for k, v in sorted(result.errors.items())) or "none"
    lines.append(f"protocol errors: {errs}")
    lines.append(format_table(result.timing))
    return "\n".join(lines)
