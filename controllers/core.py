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
- a reset is `Session.reset(mask)`, called here only: for the rows the driver set in `reset`, and
  for every slot after a warm-up or a session swap.

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

from policyrt.controllers.safety import DEADLINE, SafetyChain
from policyrt.spec import Spec
from policyrt.timing import now_ns

log = logging.getLogger(__name__)


class SpecMismatchError(ValueError):
    """The robot's SPEC does not fit the bundle's manifest (dims or bounds)."""


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
    `faults` (plus NONFINITE, DEADLINE), `deadline_missed`, `fault_onsets` (OR of the fault bits
    whose run began this tick). Set by the driver after sending: `stage_ns` (this tick's stage
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

    def __init__(self, session, chain: SafetyChain, stages: tuple[str, ...], *, contain_errors: bool = False):
        """contain_errors: an exception from the session step becomes a fallback tick (counted in
        `infer_errors`, logged once) instead of ending the run; the real-time driver wants that,
        since a broken backend must not take the robots' safe action away."""
        if session.batch_size != chain.batch:
            raise ValueError(f"the session has batch size {session.batch_size}, the safety chain {chain.batch}")
        self.session, self.chain = session, chain
        self.record = TickRecord(chain, session.manifest.obs_dim, stages)
        self.contain_errors = contain_errors
        self.infer_errors = 0
        self.resets = 0  # slot resets
        self.deadline_misses = 0
        self.t_infer = self.t_filter = 0  # clock readings of the last tick, for the driver's stages

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
        raw = self._step() if run_policy else None
        self.t_infer = clock()
        rec.deadline_missed = False
        if deadline_ns is not None and run_policy and self.t_infer > deadline_ns:
            self._missed_deadline()
            faulted = True
        rec.stepped = raw is not None
        out = chain.filter(raw, rec.faults, rec.tick, rec.live, faulted=faulted)
        rec.fault_onsets = chain.onsets
        self.t_filter = clock()
        return out

    def _step(self) -> np.ndarray | None:
        rec = self.record
        try:
            self.session.step(rec.obs, rec.rewards, prev_action=self.chain.applied, out=rec.raw)
        except Exception as exc:
            if not self.contain_errors:
                raise
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
        for _ in range(steps):
            self.session.step(rec.obs, rec.rewards, prev_action=self.chain.applied, out=rec.raw)
        if steps:
            self.session.reset()

    def replace_session(self, session) -> None:
        """A new session of the same dims and batch; every slot's state starts fresh."""
        session.reset()
        self.session = session
