"""The control core: the one tick every controller driver runs, for a batch of P robot slots.

A tick: reset the slots the driver marked -> one session step over all P rows into the core's own
buffer (`out=`: nothing is allocated) -> the safety chain (controllers/safety.py) -> actions and ACT
flags. The drivers only fill the rows and send the answers: lockstep (controllers/lockstep.py, a
blocking receive per tick) and real-time (controllers/realtime_loop.py, a scheduler and robot
ports). One robot is P = 1: the same code on [1, ...] buffers.

One owner each:
- the previous action is the safety chain's `applied` (what each robot got last tick). It is the
  session's prev_action input every step; a resetting row's prev_action and reward are ignored by
  the step graph itself (policies/xlstm_step.py, dt_step.py: "whatever the host sent").
- a reset is `Session.reset(mask)`, called here only: for the rows the driver set in `reset`, for
  every slot after a warm-up or a session swap, and for the rows whose raw action was non-finite,
  right after that tick (`state_resets`): a NaN in a recurrent state would otherwise poison every
  action until the episode ends, and the next tick must start from a clean state.

Two guards keep the policy's state finite (docs/SAFETY.md):
- the observation guard: a row whose observation leaves the bundle's recorded range
  (manifest obs_low/obs_high) widened by `obs_range_factor` (`obs_guard_box`) gets the fault bit
  OBS_RANGE, i.e. the fallback action like a stale observation, and the policy is fed that
  observation clipped into the box (`record.obs` keeps what the robot sent, for the observers);
- the state reset above, for whatever the guard lets through (or when it is off).
Both cost three in-place ufuncs and a flag test on the fault-free path; nothing is allocated.

An exception from the session step (policyrt.runtime.backend.InferenceError, or anything else a
backend raises) either becomes a fallback tick (`contain_errors`, the real-time driver) or ends the
run as `InferenceFailed`, one line naming the bundle and the reason (lockstep and every warm-up);
the driver then owes its robots the safe action and BYE.

Observers (flight recorder, telemetry, episode recorder) are handed the core's `TickRecord`, one
object rewritten in place every tick, through `on_start(run, record)`, `on_tick(record)` and
`on_close()`; they read nothing else of the controller.

Board-side module: standard library and numpy only, Python 3.10.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from policyrt.controllers.safety import DEADLINE, OBS_RANGE, SafetyChain, loud, run_note
from policyrt.spec import Spec
from policyrt.timing import now_ns

log = logging.getLogger(__name__)


# The half-span of a channel that was constant in the training data, so that the guard's box has
# a width there (0.05: +-0.5 around the constant at the default factor 10).
OBS_HALF_SPAN_FLOOR = 0.05
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class SpecMismatchError(ValueError):
    """The robot's SPEC does not fit the bundle's manifest (dims or bounds)."""


class InferenceFailed(RuntimeError):
    """The session step raised: the run cannot go on (one line: the bundle, the tick, the reason)."""


def obs_guard_box(manifest, factor: float) -> tuple[np.ndarray, np.ndarray] | None:
    """The observations the guard lets through, float32 [obs_dim] low and high: per channel,
    center +- factor x max(half-span, OBS_HALF_SPAN_FLOOR) of the bundle's recorded range
    (`manifest.obs_low/obs_high`, the training data's min/max). None: the guard is off (factor
    0, or a bundle that records no range)."""
    low, high = getattr(manifest, "obs_low", None), getattr(manifest, "obs_high", None)
    if not factor or low is None or high is None:
        return None
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    center = (low + high) / 2
    reach = factor * np.maximum((high - low) / 2, OBS_HALF_SPAN_FLOOR)
    box = np.clip(center - reach, -_FLOAT32_MAX, _FLOAT32_MAX), np.clip(center + reach, -_FLOAT32_MAX, _FLOAT32_MAX)
    return box[0].astype(np.float32), box[1].astype(np.float32)


def describe_obs_guard(manifest, factor: float) -> str:
    """The guard's state in words, for a start-up line (`serve --check`, the core's log)."""
    if not factor:
        return "observation guard off (obs_range_factor 0)"
    if obs_guard_box(manifest, factor) is None:
        return "observation guard off: the bundle records no observation range (obs_low/obs_high)"
    return f"observation guard on: {factor:g} x the recorded observation range"


def session_label(session) -> str:
    """The session's bundle path for a message (a stand-in session has none)."""
    bundle = getattr(session, "bundle", None)
    return str(bundle.path) if bundle is not None else "the session"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


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
    bundle_low, bundle_high = manifest_bounds(manifest)
    low, high = np.maximum(robot_low, bundle_low), np.minimum(robot_high, bundle_high)
    if (low > high).any():
        raise SpecMismatchError(
            f"action bounds do not overlap: robot [{robot_low}, {robot_high}], "
            f"bundle [{manifest.action_low}, {manifest.action_high}]"
        )
    rate = getattr(manifest, "control_rate_hz", None)
    if rate and spec.control_rate_hz and abs(rate - spec.control_rate_hz) > 1e-3 * rate:
        log.warning("robot runs at %.3g Hz, the bundle recommends %.3g Hz", spec.control_rate_hz, rate)
    return low.astype(np.float32), high.astype(np.float32)


def manifest_bounds(manifest) -> tuple[np.ndarray, np.ndarray]:
    """The bundle's action bounds, float32 [act_dim]; a missing bound is infinite."""
    dim = manifest.act_dim

    def bound(name: str, default: float) -> np.ndarray:
        value = getattr(manifest, name, None)
        return np.full(dim, default, np.float32) if value is None else np.asarray(value, np.float32)

    return bound("action_low", -np.inf), bound("action_high", np.inf)


class TickRecord:
    """One tick as observers see it. The arrays are the core's working buffers, rewritten in place
    every tick: read them in on_tick, copy what you keep. Rows are robot slots.

    Set by the driver before the core's tick: `tick`, `t_start_ns`, `obs` (the row's newest
    observation, a terminal one included), `rewards`, `reset` (the row's policy state starts over
    this tick), `live` (the row is owed an action: a robot with a session and a non-terminal
    observation), `new_obs` (an observation arrived for the row this tick), `obs_flags` (the
    robot's ObsFlag bits of that observation), `connected` (the robot has a session), `faults`
    (SafetyChain bits found before inference: STALE, ESTOP). Set by the core: `stepped` (the
    policy ran: `raw` is this tick's), `raw`, `actions` and `act_flags` (what the chain made of it),
    `faults` (plus NONFINITE, DEADLINE, OBS_RANGE), `deadline_missed`, `fault_onsets` (OR of the
    fault bits whose run began this tick), `state_reset` (the row's policy state was reset after
    this tick: its raw action was non-finite). Set by the driver after sending: `stage_ns` (this tick's stage
    durations, in `RunInfo.stages` order) and `jitter_ns` (tick start minus its due time)."""

    def __init__(self, chain: SafetyChain, obs_dim: int, stages: tuple[str, ...]):
        b, a = chain.batch, chain.act_dim
        self.tick = -1
        self.t_start_ns = 0
        self.obs = np.zeros((b, obs_dim), np.float32)
        self.rewards = np.zeros(b, np.float32)
        self.reset = np.zeros(b, bool)
        self.live = np.zeros(b, bool)
        self.new_obs = np.zeros(b, bool)
        self.obs_flags = np.zeros(b, np.uint32)
        self.connected = np.ones(b, bool)
        self.faults = np.zeros(b, np.uint8)
        self.stepped = False
        self.raw = np.zeros((b, a), np.float32)
        self.actions = chain.out
        self.act_flags = chain.flags
        self.deadline_missed = False
        self.fault_onsets = 0
        self.state_reset = np.zeros(b, bool)
        self.stage_ns = np.zeros(len(stages), np.int64)
        self.jitter_ns = 0


@dataclass(frozen=True)
class RunInfo:
    """What an observer learns about the run at on_start (the callables are cheap to call, but
    not for every tick: they build their answer)."""

    rate_hz: float
    robots: tuple[str, ...]
    batch: int
    obs_dim: int
    act_dim: int
    stages: tuple[str, ...]
    action_low: np.ndarray  # float32 [batch, act_dim], the bounds in force (updated on a new SPEC)
    action_high: np.ndarray
    counters: Callable[[], dict]  # the controller's counters now
    fault_events: Callable[[], np.ndarray]  # SafetyChain.recent_events()
    robot_names: Callable[[], list[str]]  # the names connected robots announced


class Observer(Protocol):
    def on_start(self, run: RunInfo, record: TickRecord) -> None: ...

    def on_tick(self, record: TickRecord) -> None: ...

    def on_close(self) -> None: ...


class ControlCore:
    """The session, the safety chain and the tick's buffers (`record`) of one controller."""

    def __init__(self, session, chain: SafetyChain, stages: tuple[str, ...], *, contain_errors: bool = False,
                 obs_range_factor: float = 0.0):
        """contain_errors: an exception from the session step becomes a fallback tick (counted in
        `infer_errors`, logged once) instead of ending the run (InferenceFailed); the real-time
        driver wants that, since a broken backend must not take the robots' safe action away.
        obs_range_factor: the observation guard's factor (obs_guard_box; 0: off)."""
        if session.batch_size != chain.batch:
            raise ValueError(f"the session has batch size {session.batch_size}, the safety chain {chain.batch}")
        self.session, self.chain = session, chain
        self.record = TickRecord(chain, session.manifest.obs_dim, stages)
        self.contain_errors = contain_errors
        self.infer_errors = 0
        self.resets = 0  # slot resets
        self.deadline_misses = 0
        self.state_resets = 0  # slot resets after a non-finite raw action
        self.state_reset_ticks = 0  # ticks with such resets (their log lines are rate-limited)
        self.t_infer = self.t_filter = 0  # clock readings of the last tick, for the driver's stages
        self.obs_range_factor = obs_range_factor
        self._guard_obs(session)

    def tick(self, *, reset_any: bool, run_policy: bool, faulted: bool, deadline_ns: int | None = None,
             clock=now_ns) -> np.ndarray:
        """One tick over the rows the driver filled in `record`; returns the actions (the chain's
        `out`, flags in `record.act_flags`).

        reset_any: some row of `record.reset` is set. run_policy: step the session (the real-time
        driver skips it when no row is owed the policy's action). faulted: some row of
        `record.faults` is set (False spares the chain a reduction). deadline_ns: absolute clock
        time by which inference must end, or the stepped rows get the fallback (None: no deadline).
        """
        rec, chain = self.record, self.chain
        if reset_any:
            self.resets += int(np.count_nonzero(rec.reset))
            self.session.reset(rec.reset)
        if self._state_reset_set:
            rec.state_reset.fill(False)
            self._state_reset_set = False
        raw = None
        if run_policy:
            obs = rec.obs
            if self._obs_low is not None:
                obs = self._policy_obs
                if self._clip_observations():
                    faulted = True
            raw = self._step(obs)
        self.t_infer = clock()
        rec.deadline_missed = False
        if deadline_ns is not None and run_policy and self.t_infer > deadline_ns:
            self._missed_deadline()
            faulted = True
        rec.stepped = raw is not None
        out = chain.filter(raw, rec.faults, rec.tick, rec.live, faulted=faulted)
        rec.fault_onsets = chain.onsets
        if chain.raw_nonfinite:
            self._reset_nonfinite_rows()
        self.t_filter = clock()
        return out

    def _guard_obs(self, session) -> None:
        """Arm the observation guard for `session`'s bundle (its box and its buffers), or disarm it."""
        box = obs_guard_box(session.manifest, self.obs_range_factor)
        self._state_reset_set = False
        self._obs_low = self._obs_high = None
        if box is None:
            if self.obs_range_factor:
                log.warning("%s: %s", session_label(session), describe_obs_guard(session.manifest, self.obs_range_factor))
            return
        self._obs_low, self._obs_high = box
        self._obs_center = (box[0] / 2 + box[1] / 2).astype(np.float32)
        self._policy_obs = np.zeros_like(self.record.obs)  # what the policy is fed: obs clipped into the box
        self._obs_moved = np.zeros(self.record.obs.shape, bool)

    def _clip_observations(self) -> bool:
        """The rows' observations clipped into the guard's box, into the policy's input; True
        when some live row's observation was outside (it gets OBS_RANGE). A non-finite value
        (the wire refuses them, a stand-in might not) counts as outside and is fed as the
        channel's center."""
        rec, fed, moved = self.record, self._policy_obs, self._obs_moved
        np.minimum(rec.obs, self._obs_high, out=fed)  # minimum/maximum keep a NaN: caught below
        np.maximum(fed, self._obs_low, out=fed)
        np.not_equal(fed, rec.obs, out=moved)  # NaN != NaN
        if not moved.any():
            return False
        np.copyto(fed, self._obs_center, where=~np.isfinite(fed))
        outside = moved.any(axis=1) & rec.live
        rec.faults[outside] |= OBS_RANGE
        return bool(outside.any())

    def _reset_nonfinite_rows(self) -> None:
        """Reset the policy state of the rows whose raw action was non-finite: their next tick's
        action comes from a clean state instead of a poisoned one."""
        rec = self.record
        np.logical_not(self.chain.finite_rows, out=rec.state_reset)
        self._state_reset_set = True
        self.session.reset(rec.state_reset)
        slots = np.flatnonzero(rec.state_reset)
        self.state_resets += len(slots)
        self.state_reset_ticks += 1
        if loud(self.state_reset_ticks):
            log.warning(
                "tick %d: robot slot(s) %s: non-finite policy output; policy state reset, the next "
                "action comes from a fresh state%s",
                rec.tick,
                ", ".join(map(str, slots)),
                run_note(self.state_reset_ticks),
            )

    def _step(self, obs: np.ndarray) -> np.ndarray | None:
        rec = self.record
        try:
            self.session.step(obs, rec.rewards, prev_action=self.chain.applied, out=rec.raw)
        except Exception as exc:
            if not self.contain_errors:
                raise InferenceFailed(
                    f"{session_label(self.session)}: inference failed at tick {rec.tick}: {_first_line(exc)}"
                ) from exc
            self.infer_errors += 1
            if self.infer_errors == 1:
                log.error("tick %d: inference failed (%s); sending the fallback action", rec.tick, exc)
            return None
        return rec.raw

    def _missed_deadline(self) -> None:
        rec = self.record
        self.deadline_misses += 1
        rec.deadline_missed = True
        rec.faults[rec.live & (rec.faults == 0)] |= DEADLINE  # the rows that were stepped

    def warm_up(self, steps: int) -> None:
        """Step the session `steps` times on the current rows through the tick's own call, then
        start every slot fresh: the backend's first-run allocations happen here, not at a robot's
        first deadline."""
        rec = self.record
        try:
            for _ in range(steps):
                self.session.step(rec.obs, rec.rewards, prev_action=self.chain.applied, out=rec.raw)
        except Exception as exc:
            raise InferenceFailed(f"{session_label(self.session)}: inference failed at warm-up: {_first_line(exc)}") from exc
        if steps:
            self.session.reset()

    def replace_session(self, session) -> None:
        """A new session of the same dims and batch; every slot's state starts fresh, and the
        observation guard takes the new bundle's range."""
        session.reset()
        self.session = session
        self._guard_obs(session)
