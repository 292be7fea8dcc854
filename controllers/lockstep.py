"""The lockstep driver: one observation message in, one core tick, one action message out.

The robot side (sim server or robot bridge) binds; this driver connects, says HELLO, checks the
robot's SPEC against the bundle, then answers every OBS (one environment) or OBS_BATCH (P > 1, one
row per environment "slot") through the control core (controllers/core.py) with a safety chain
of zero delay: clip to the bounds both sides agree on, the zero action (clipped into the bounds)
for a non-finite output, an observation outside the bundle's recorded range (`obs_range_factor`,
the core's observation guard) or while the robot's e-stop is latched, no stale or deadline faults.

Rows (protocol version 2, docs/PROTOCOL.md section 9, the same rule for every P): a RESET row
resets only that slot of the session; a terminal row (TERMINATED/TRUNCATED) closes that slot's
episode and is answered like any other, but its action is ignored by the robot, so it is not an
environment step, does not become the slot's previous action and never counts as a fallback; an
IDLE row (batched only) runs no episode. The session steps all P rows each tick: a batched graph
has no cheaper way to skip rows, and a slot is reset before its next live row.

Malformed messages are counted per kind and skipped; control messages go to SessionControl. The
run ends on the requested number of episodes (BYE instead of the last answer), the robot's BYE,
the robot falling silent for `robot_timeout_s`, or a stop request (SIGINT/SIGTERM through
policyrt.stopping.STOP, within one tick or at once in a receive: BYE, then the result). The BYE
is sent in one place, `run_lockstep`, with session_control.send_final_bye (a Link closes with
LINGER 0, which would drop it still queued). A session step that raises ends the run too: the
OBS it was stepping for is answered with the safe action flagged FALLBACK, then BYE, and
run_lockstep raises the core's InferenceFailed (one line: the bundle and the reason).

Board-side module: standard library, numpy and pyzmq only, Python 3.10.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from policyrt.controllers.core import ControlCore, InferenceFailed, SpecMismatchError, check_spec
from policyrt.controllers.results import EpisodeSummary, LockstepResult
from policyrt.controllers.safety import ACT_FALLBACK, ESTOP, SafetyChain
from policyrt.link import Link
from policyrt.protocol import Encoder, ErrorTally, MsgType, ProtocolError, SlotFlag
from policyrt.session_control import Control, SessionControl, send_final_bye
from policyrt.spec import Spec
from policyrt.stopping import STOP, StopRequest
from policyrt.timing import StageTimes, now_ns

log = logging.getLogger(__name__)

STAGES = ("receive", "infer", "filter", "send", "respond")
# receive: from the end of the previous tick until a valid OBS is decoded (includes the robot's
#          own work and both transport legs in lockstep);
# respond: OBS decoded -> ACT handed to ZeroMQ, i.e. the controller's whole share of a round trip.

# Plain ints: `int & IntFlag` goes through the enum machinery, ~1 us each on the hot path. An OBS's
# flags are the same bits as an OBS_BATCH row's.
_RESET = int(SlotFlag.RESET)
_TERMINATED, _TRUNCATED = int(SlotFlag.TERMINATED), int(SlotFlag.TRUNCATED)
_DONE = _TERMINATED | _TRUNCATED
_NOT_LIVE = _DONE | int(SlotFlag.IDLE)
# Stop reasons after which the robot cannot hear a BYE: it said BYE itself, or fell silent.
_ROBOT_GONE = ("robot_left", "robot_lost")


def handshake(link: Link, timeout_s: float, errors: ErrorTally, stop: StopRequest | None = None) -> Spec | None:
    """Say HELLO once, then wait up to timeout_s for the SPEC; frames before it are counted and
    skipped; None when a stop was requested meanwhile. HELLO is not repeated: ZeroMQ delivers it
    once the robot side is up, and a second HELLO would make the robot start the session over."""
    if not link.send(Encoder().control(MsgType.HELLO)):
        raise TimeoutError(f"could not send HELLO to {link.endpoint}")
    deadline = now_ns() + int(timeout_s * 1e9)
    while True:
        try:
            msg = link.recv(max(0, deadline - now_ns()) / 1e9)
        except ProtocolError as exc:
            errors.add(exc)
            continue
        if stop is not None and stop.requested:
            return None
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
    stop: StopRequest = STOP,
    obs_range_factor: float = 0.0,
) -> LockstepResult:
    """Control the robot at `connect` with `session` until `episodes` episodes ended (None: until
    the robot leaves), the robot is silent for `robot_timeout_s`, or `stop` is requested.

    spin_us: busy-poll this long for the next OBS before blocking; trades a CPU core for the
    tens of microseconds a blocking wake-up costs. make_session(batch_size): called when the
    robot announces a number of environments other than `session.batch_size` (without it, that
    is a SpecMismatchError). obs_range_factor: the observation guard's (controllers/core.py; 0 off).
    Raises SpecMismatchError when the robot's SPEC does not fit `session.manifest`, TimeoutError
    when no SPEC arrives within robot_timeout_s, InferenceFailed when a session step raised (the
    robot got the safe action and BYE).
    """
    errors = ErrorTally(log, "controller")
    with Link(connect, bind=False, context=context, stop=stop) as link:
        spec = handshake(link, robot_timeout_s, errors, stop)  # TimeoutError: no robot to tell
        reason = None
        try:
            if spec is None or stop.requested:
                return _interrupted_before_the_session(stop, errors, spec)
            low, high = check_spec(spec, session.manifest, connect)
            session = _session_for(spec, session, make_session, connect)
            link.obs_dim, link.act_dim, link.num_envs = spec.obs_dim, spec.act_dim, spec.num_envs
            log.info(
                "connected to %s (%s): obs_dim=%d act_dim=%d%s",
                connect,
                spec.robot or "robot",
                spec.obs_dim,
                spec.act_dim,
                f", {spec.num_envs} environments" if spec.num_envs > 1 else "",
            )
            driver = LockstepDriver(session, link, low, high, errors, spin_us, stop, obs_range_factor)
            gc.collect()
            gc.freeze()  # the objects alive now are never garbage: keep collections off their backs
            try:
                reason, detail = driver.run(episodes, robot_timeout_s)
            finally:
                gc.unfreeze()
        finally:
            # The session's last frame on every ending but the robot's own BYE or silence (a SPEC
            # that does not fit and a failure included: the robot ends now, not at its timeout).
            if reason not in _ROBOT_GONE:
                send_final_bye(link, Encoder())
    chain = driver.core.chain
    return LockstepResult(
        stop_reason=reason,
        detail=detail,
        ticks=driver.ticks,
        episodes=tuple(driver.episodes.ended),
        errors=dict(errors.counts),
        fallbacks=chain.fallback_ticks,
        nonfinite_actions=chain.counts["nonfinite"],
        obs_range_fallbacks=chain.counts["obs_range"],
        state_resets=driver.core.state_resets,
        timing=driver.times.summary(),
        spec=spec,
        num_envs=spec.num_envs,
        env_steps=driver.env_steps,
        stage_times=driver.times,
    )


def _interrupted_before_the_session(stop: StopRequest, errors: ErrorTally, spec) -> LockstepResult:
    return LockstepResult(
        stop_reason="interrupted",
        detail=f"stopped by {stop.reason} before the session started",
        ticks=0,
        episodes=(),
        errors=dict(errors.counts),
        fallbacks=0,
        nonfinite_actions=0,
        timing={},
        spec=spec,
        num_envs=spec.num_envs if spec is not None else 1,
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


class LockstepDriver:
    """The receive/answer loop around a ControlCore of the robot's batch size."""

    def __init__(self, session, link: Link, low, high, errors: ErrorTally, spin_us: int, stop: StopRequest,
                 obs_range_factor: float = 0.0):
        batch = session.batch_size
        chain = SafetyChain(low, high, batch=batch, fallback="zero")
        self.core = ControlCore(session, chain, STAGES, obs_range_factor=obs_range_factor)
        self.link, self.errors, self.stop = link, errors, stop
        self.spin_ns = max(0, int(spin_us * 1000))
        self.frames = (SingleFrames if batch == 1 else BatchFrames)(self.core.record, len(low))
        self.control = SessionControl("controller", errors, log, cleared_means="policy state reset")
        self.episodes = EpisodeBook(batch)
        self.times = StageTimes(STAGES)
        self.ticks = self.env_steps = 0
        self._reset_all = False  # CLEAR: the policy state from before the e-stop is not trusted

    def run(self, episodes: int | None, timeout_s: float) -> tuple[str, str]:
        link, stop, data_type = self.link, self.stop, self.frames.data_type
        t_prev = now_ns()
        while not stop.requested:
            try:
                msg = link.recv(timeout_s, self.spin_ns)
            except ProtocolError as exc:
                self.errors.add(exc)
                continue
            if msg is None:
                if stop.requested:
                    break
                return "robot_lost", (
                    f"no message from the robot at {link.endpoint} for {timeout_s:g} s "
                    f"after {self.ticks} ticks: it stopped or the link broke"
                )
            if msg.type is data_type:
                t_obs = now_ns()
                bits = self.frames.take(msg)
                self.episodes.take(self.core.record, self.ticks, bits & _RESET)
                if bits & _DONE:
                    self.episodes.close(self.frames.done_rows(msg), self.ticks)
                    if episodes is not None and len(self.episodes.ended) >= episodes:
                        return "episodes_done", f"{len(self.episodes.ended)} episode(s) as asked"
                t_prev = self._tick(msg, bits, t_obs, t_prev)
            else:
                was_latched = self.control.estop
                if self.control.handle(msg) is Control.BYE:
                    return "robot_left", f"the robot ended the session after {self.ticks} ticks"
                if was_latched and not self.control.estop:
                    self._reset_all = True
        return "interrupted", f"stopped by {stop.reason} after {self.ticks} ticks"

    def _tick(self, msg, bits: int, t_obs: int, t_prev: int) -> int:
        core = self.core
        rec = core.record
        rec.tick = self.ticks
        if self._reset_all:
            self._reset_all = False
            rec.reset.fill(True)
            bits |= _RESET
        estop = self.control.estop
        rec.faults.fill(ESTOP if estop else 0)  # the chain adds its own bits in place each tick
        try:
            actions = core.tick(reset_any=bits & _RESET != 0, run_policy=not estop, faulted=estop)
        except InferenceFailed:
            # The robot waits for this answer: the safe action, then BYE (run_lockstep), not silence.
            safe_flags = np.full(len(rec.live), ACT_FALLBACK, np.uint32)
            self.link.send(self.frames.answer(msg, core.chain.safe, safe_flags))
            raise
        t_infer, t_filter = core.t_infer, core.t_filter
        self.link.send(self.frames.answer(msg, actions, rec.act_flags))
        t_sent = now_ns()
        self.ticks += 1
        self.env_steps += self.frames.live_rows
        self.times.record(
            t_obs - t_prev, t_infer - t_obs, t_filter - t_infer, t_sent - t_filter, t_sent - t_obs
        )
        return t_sent


class SingleFrames:
    """OBS in, ACT out: one environment, row 0 of the core's buffers (plain ints, no reductions)."""

    data_type = MsgType.OBS

    def __init__(self, record, act_dim: int):
        self.record, self.enc = record, Encoder(act_dim=act_dim)
        self.live_rows = 0

    def take(self, msg) -> int:
        """Fill the record's row from the message; returns the OR of the rows' flags."""
        rec, flags, values = self.record, msg.flags, msg.values
        rec.obs[0] = values[:-1]
        rec.rewards[0] = values[-1]
        rec.reset[0] = flags & _RESET
        self.live_rows = 0 if flags & _NOT_LIVE else 1
        rec.live[0] = self.live_rows
        return flags

    def done_rows(self, msg) -> list[tuple[int, int, int]]:
        return [(0, msg.episode, msg.flags)]

    def answer(self, msg, actions: np.ndarray, flags: np.ndarray):
        return self.enc.act(actions[0], ack=msg.seq, flags=int(flags[0]), episode=msg.episode, step=msg.step)


class BatchFrames:
    """OBS_BATCH in, ACT_BATCH out: row i of the message is slot i of the core's buffers."""

    data_type = MsgType.OBS_BATCH

    def __init__(self, record, act_dim: int):
        batch = len(record.live)
        self.record, self.enc = record, Encoder(act_dim=act_dim, num_envs=batch)
        self._bits = np.zeros(batch, np.uint32)
        self.live_rows = 0

    def take(self, msg) -> int:
        rec, bits = self.record, self._bits
        flags = msg.slots[0]
        np.copyto(rec.obs, msg.obs)
        np.copyto(rec.rewards, msg.rewards)
        np.bitwise_and(flags, _RESET, out=bits)
        np.not_equal(bits, 0, out=rec.reset)
        np.bitwise_and(flags, _NOT_LIVE, out=bits)
        np.equal(bits, 0, out=rec.live)
        self.live_rows = int(np.count_nonzero(rec.live))
        return int(np.bitwise_or.reduce(flags))

    def done_rows(self, msg) -> list[tuple[int, int, int]]:
        flags, episodes = msg.slots[0], msg.slots[1]
        return [(int(s), int(episodes[s]), int(flags[s])) for s in np.flatnonzero(flags & _DONE)]

    def answer(self, msg, actions: np.ndarray, flags: np.ndarray):
        return self.enc.act_batch(actions, flags, ack=msg.seq)


class EpisodeBook:
    """Per-slot episode return and length, and the episodes that ended.

    One in-place add per tick: every row's reward goes into a running sum (a RESET row's reward
    is 0, an IDLE row's too), and an episode's return is that sum now minus the sum at its RESET
    row; its length is the ticks from its RESET row to its terminal row, since every frame
    carries every slot (the terminal row itself is no step)."""

    def __init__(self, batch: int):
        self.sums = np.zeros(batch, np.float64)
        self._single = batch == 1
        self.start_sums = np.zeros(batch, np.float64)
        self.start_ticks = np.zeros(batch, np.int64)
        self.ended: list[EpisodeSummary] = []

    def take(self, rec, tick: int, reset_any: int) -> None:
        """The rows of `tick` (call before closing its terminal rows)."""
        if self._single:  # a scalar add: a fifth of an array add's cost, which P = 1 pays every tick
            self.sums[0] += rec.rewards[0]
        else:
            self.sums += rec.rewards
        if reset_any:
            self.start_sums[rec.reset] = self.sums[rec.reset]
            self.start_ticks[rec.reset] = tick

    def close(self, rows: list[tuple[int, int, int]], tick: int) -> None:
        """rows: (slot, episode index, flags) of the terminal rows of `tick`."""
        for slot, index, flags in rows:
            summary = EpisodeSummary(
                index=index,
                episode_return=float(self.sums[slot] - self.start_sums[slot]),
                length=int(tick - self.start_ticks[slot]),
                terminated=bool(flags & _TERMINATED),
                truncated=bool(flags & _TRUNCATED),
                slot=slot,
            )
            self.ended.append(summary)
            log.info(
                "episode %d%s: return %.2f over %d steps",
                summary.index,
                f" (slot {slot})" if len(self.sums) > 1 else "",
                summary.episode_return,
                summary.length,
            )
            self.start_sums[slot], self.start_ticks[slot] = self.sums[slot], tick + 1
