"""The real-time sim server: the sim robot that behaves like a robot, not like a test rig.

Lockstep (sim/lockstep_driver.py) waits for every action, so a slow policy costs only wall-clock
time. A robot does not wait: its physics moves on whether the controller answered or not. This
driver ticks the sim robot (sim/robot.py, one environment) on a wall-clock scheduler at the
environment's control rate (or `rate_hz`, which rescales the physics timestep), applies the latest
ACT it has (zero-order hold), and publishes each new observation on the conflated stream link. A
policy that answers late acts on an old state and loses return; one that stops answering is
replaced by the robot's own safe action (zero, or the bound nearest to zero) once no ACT came for
`act_timeout_s` -- logged, counted, and undone by the next ACT. The tick after a terminal
observation resets the environment (the robot's NEXT_STEP autoreset); an ACT answering a terminal
observation is never applied (protocol version 2).

Session control (docs/PROTOCOL.md, section 1, real-time mode; policyrt/session_control.py):
- HELLO (from a new or restarted controller): SPEC, then a new episode starting with a RESET OBS;
- ESTOP / CLEAR, from the controller or an operator (`policyrt estop`), latch / release the
  robot's e-stop. While latched the server repeats ESTOP to its controller every
  `ESTOP_REPEAT_S`, and after a CLEAR it sends CLEAR a few times: a frame from the robot may be
  routed to an operator that is still connected (a DEALER deals frames round-robin), repeats
  make sure the controller hears it. An ACT flagged ESTOP is applied as the safe action but does
  not latch (the controller says it is stopped; only an explicit ESTOP latches);
- BYE ends the run; a controller that goes silent makes the server go safe and wait for a new
  HELLO, up to `controller_timeout_s`; a stop request (SIGINT/SIGTERM) ends it with BYE.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import zmq

from policyrt.protocol import ActFlag, Encoder, ErrorTally, MsgType
from policyrt.scheduler import TickScheduler
from policyrt.session_control import Control, SessionControl, send_final_bye
from policyrt.stopping import STOP, StopRequest
from policyrt.stream import open_session_link, open_stream_link
from policyrt.timing import StageTimes

from .robot import ENDED, EpisodeStats, SimRobot, episodes_line, finish, limits_line, make_env, spec_for_env

log = logging.getLogger(__name__)

ESTOP_REPEAT_S = 0.2
CLEAR_REPEATS = 3
_ESTOP = int(ActFlag.ESTOP)
_MAX_FRAMES_PER_TICK = 256
_clock = time.monotonic_ns  # the scheduler's clock


@dataclass(frozen=True)
class RealtimeServeResult:
    env_id: str
    bind: str
    rate_hz: float
    stop_reason: str  # "episodes_done" | "duration" | "controller_left" | "controller_lost" | "no_controller" | "interrupted"
    detail: str
    episodes: tuple[EpisodeStats, ...]
    aborted_episodes: int  # cut short by a controller (re)starting
    steps: int  # physics steps (ticks with a controller session)
    acts: int  # valid ACTs received
    held_steps: int  # steps that re-applied an older ACT (no new one since the last step)
    safe_steps: int  # steps with the robot's safe action because ACTs had stopped
    safe_events: int  # times the robot went safe on its own
    estops: int  # e-stop latches
    estop_steps: int  # steps under a latched e-stop
    controller_sessions: int  # HELLOs answered
    errors: dict[str, int]
    act_lag: dict[str, float]  # steps between an OBS and the ACT answering it (p50/p99/max)
    jitter: dict[str, float]  # tick-start jitter of the server's own scheduler, us
    timing: dict[str, dict[str, float]]
    clamped_actions: int = 0  # ACTs outside the announced bounds, applied clamped to them
    nonfinite_steps: int = 0  # steps whose observation or reward was not finite: episode cut

    @property
    def returns(self) -> list[float]:
        return [e.episode_return for e in self.episodes]

    def to_dict(self) -> dict:
        return asdict(self)


def set_rate(env, rate_hz: float) -> float:
    """Make the environment's control step last 1 / rate_hz of simulated time by scaling the
    MuJoCo timestep (frame_skip stays); returns the new control period. The dynamics are the
    same system integrated more finely, so a policy trained at the original rate sees a
    different time base: use it for timing studies, not to judge a policy's return."""
    core = env.unwrapped
    model = getattr(core, "model", None)
    if model is None or not hasattr(core, "frame_skip"):
        raise ValueError(f"{core.__class__.__name__} is not a MuJoCo environment: cannot change its rate")
    model.opt.timestep = 1.0 / (rate_hz * core.frame_skip)
    return float(core.dt)


def serve_realtime(
    env_id: str,
    bind: str,
    *,
    rate_hz: float | None = None,
    episodes: int | None = None,
    duration_s: float | None = None,
    seed: int = 0,
    act_timeout_s: float | None = None,
    controller_timeout_s: float = 10.0,
    connect_timeout_s: float | None = None,
    results_path: str | Path | None = None,
    env_kwargs: dict | None = None,
    spin_us: float = 200.0,
    context: zmq.Context | None = None,
    curve=None,
    on_episode: Callable[[EpisodeStats], None] | None = None,
    stop: StopRequest | None = STOP,
) -> RealtimeServeResult:
    """Serve `env_id` in real time on `bind` (session link) and its stream endpoint.

    rate_hz: run the control step at this rate (rescaling the physics timestep); default: the
    environment's own rate. act_timeout_s: go safe when no ACT came for this long (default:
    5 control periods, at least 20 ms). Stops after `episodes` completed episodes, after
    `duration_s` of session time, on the controller's BYE, when no controller is connected for
    `controller_timeout_s`, when none said HELLO within `connect_timeout_s` (None: wait), or on a
    stop request. on_episode: called with each finished episode's stats.
    """
    env = make_env(env_id, **(env_kwargs or {}))
    try:
        dt = set_rate(env, rate_hz) if rate_hz else float(env.unwrapped.dt)
        spec = spec_for_env(env_id, env)
        robot = SimRobot([env], spec, seed=seed, seeding="first", episodes=episodes, on_episode=on_episode)
        driver = RealtimeDriver(robot, dt, act_timeout_s, spin_us, stop)
        with (
            open_session_link(bind, bind=True, context=context, curve=curve) as session,
            open_stream_link(bind, bind=True, context=context, curve=curve) as stream,
        ):
            driver.attach(session, stream)
            reason, detail = driver.run(duration_s, controller_timeout_s, connect_timeout_s)
    finally:
        env.close()
    result = RealtimeServeResult(
        env_id=env_id,
        bind=bind,
        rate_hz=round(1.0 / dt, 6),
        stop_reason=reason,
        detail=detail,
        episodes=tuple(robot.episodes),
        aborted_episodes=robot.aborted,
        steps=robot.steps,
        acts=driver.acts,
        held_steps=driver.held,
        safe_steps=driver.safe_steps,
        safe_events=driver.safe_events,
        estops=driver.control.estops,
        estop_steps=driver.estop_steps,
        controller_sessions=driver.sessions,
        errors=dict(driver.errors.counts),
        act_lag=driver.lag_summary(),
        jitter=driver.sched.jitter_summary(),
        timing=driver.times.summary(),
        clamped_actions=robot.clamped_actions,
        nonfinite_steps=robot.nonfinite_steps,
    )
    return finish(result, results_path)


class RealtimeDriver:
    def __init__(self, robot: SimRobot, dt: float, act_timeout_s: float | None, spin_us: float,
                 stop: StopRequest | None = None):
        if robot.num_envs != 1:
            raise ValueError("the real-time mode serves one environment per endpoint")
        self.robot, self.spec, self.dt, self.stop = robot, robot.spec, dt, stop
        self.sched = TickScheduler(1.0 / dt, spin_us=spin_us, clock=_clock)
        timeout = act_timeout_s if act_timeout_s is not None else max(5 * dt, 0.02)
        self.act_timeout_ns = int(timeout * 1e9)
        self.enc = Encoder(obs_dim=self.spec.obs_dim, act_dim=self.spec.act_dim)
        self.errors = ErrorTally(log, "real-time sim server")
        self.control = SessionControl("robot", self.errors, log, where=lambda: f"step {self.robot.steps}")
        self.times = StageTimes(("receive", "env_step", "send"))
        self.latest = np.zeros(self.spec.act_dim, np.float32)  # the newest applicable ACT's action
        self.acts = self.held = self.safe_steps = self.safe_events = self.estop_steps = self.sessions = 0
        self.lags = np.zeros(1 << 17, np.int64)
        self.lag_count = 0
        self.last_act_ns = 0  # receive time of the newest ACT (or of the HELLO, before the first)
        self.last_contact_ns = 0  # any frame from the controller
        self.fresh_act = False
        self.act_estop = False  # the newest ACT carries the ESTOP flag
        self.is_safe = False
        self.estop_sent_ns = 0
        self.clear_repeats = 0
        self.need_start = False  # a HELLO came: the next tick starts the session's episode
        self.terminal_seq = -1  # seq of the last terminal OBS (-1: none): an ACT answering it is not applied
        self.obs_seq_by_step: dict[int, int] = {}
        self.stop_reason: tuple[str, str] | None = None

    def attach(self, session, stream) -> None:
        self.session, self.stream = session, stream
        for link in (session, stream):
            link.obs_dim, link.act_dim = self.spec.obs_dim, self.spec.act_dim

    def run(self, duration_s, controller_timeout_s, connect_timeout_s) -> tuple[str, str]:
        ep, rate = self.session.endpoint, 1.0 / self.dt
        log.info(
            "serving %s on %s (real-time, %.4g Hz, stream on %s): waiting for a controller "
            "(e.g. `policyrt run BUNDLE --connect %s --mode realtime --rate %.4g`)",
            self.spec.robot, ep, rate, self.stream.endpoint, ep, rate,
        )
        sched, robot = self.sched, self.robot
        t_begin = _clock()
        lost_ns = int(controller_timeout_s * 1e9)
        duration_ticks = None if duration_s is None else int(round(duration_s / self.dt))
        session_ticks = 0
        sched.start()
        try:
            while True:
                sched.wait()
                if self.stop is not None and self.stop.requested:
                    return "interrupted", f"stopped by {self.stop.reason} after {robot.steps} steps"
                now = _clock()
                self._receive(now)
                t_recv = _clock()
                if self.stop_reason is not None:
                    return self.stop_reason
                if not self.sessions:
                    if connect_timeout_s is not None and now - t_begin > connect_timeout_s * 1e9:
                        return "no_controller", f"no controller said HELLO on {ep} within {connect_timeout_s:g} s"
                    continue
                if now - self.last_contact_ns > lost_ns:
                    return "controller_lost", (
                        f"no message from any controller for {controller_timeout_s:g} s after {robot.steps} steps; "
                        "exiting"
                    )
                self._repeat_estop(now)
                self._tick(now)
                t_step = _clock()
                self._send_observation()
                self.times.record(t_recv - now, t_step - t_recv, _clock() - t_step)
                session_ticks += 1
                if robot.done:
                    return "episodes_done", f"{len(robot.episodes)} episode(s) completed as asked"
                if duration_ticks is not None and session_ticks >= duration_ticks:
                    return "duration", f"ran the requested {duration_s:g} s ({session_ticks} steps)"
        finally:
            robot.abandon()
            if self.control.connected:
                send_final_bye(self.session, self.enc)

    # ---- receiving ---------------------------------------------------------------------------

    def _receive(self, now: int) -> None:
        self.fresh_act = False
        for msg in self.session.pending(_MAX_FRAMES_PER_TICK, self.errors):
            self._control(msg, now)
        if self.stop_reason is not None:
            # The controller said BYE: the run ends this tick. ACTs it sent before the BYE may
            # still wait on the other link (two sockets keep no order between them): not errors.
            return
        for msg in self.stream.pending(_MAX_FRAMES_PER_TICK, self.errors):
            if msg.type is not MsgType.ACT:
                self.control.unexpected(f"{msg.type.name} on the action stream")
                continue
            if not self.control.connected:
                self.control.unexpected("ACT without a controller session (no HELLO)")
                continue
            self.last_act_ns = self.last_contact_ns = now
            self.acts += 1
            sent_at = self.obs_seq_by_step.get(msg.ack)
            if sent_at is not None:
                self.lags[self.lag_count % len(self.lags)] = self.robot.steps - sent_at
                self.lag_count += 1
            if msg.ack == self.terminal_seq:
                continue  # answers the end of an episode: alive, but nothing to apply
            self.latest[:] = msg.values
            self.robot.clamp(self.latest)  # on receipt: a held ACT is counted once
            self.act_estop = bool(msg.flags & _ESTOP)
            self.fresh_act = True

    def _control(self, msg, now: int) -> None:
        if msg.type is MsgType.HEARTBEAT:
            self.last_contact_ns = now
        estop = self.control.estop
        what = self.control.handle(msg)
        if self.control.estop != estop:  # tell the controller at once (ESTOP) or a few times (CLEAR)
            self.estop_sent_ns = 0
            self.clear_repeats = 0 if self.control.estop else CLEAR_REPEATS
        if what is Control.HELLO:
            if self.sessions:
                log.warning("a controller said HELLO: starting a new session (episode abandoned)")
            self.session.send(self.enc.spec(self.spec, ack=msg.seq))
            self.sessions += 1
            self.last_contact_ns = now
            self.last_act_ns = now  # a controller that said HELLO owes ACTs from now on
            self.need_start = True
        elif what is Control.BYE:
            self.stop_reason = ("controller_left", f"the controller ended the session after {self.robot.steps} steps")

    def _repeat_estop(self, now: int) -> None:
        """Tell the controller the e-stop state, repeatedly (see the module docstring)."""
        if now - self.estop_sent_ns < ESTOP_REPEAT_S * 1e9 / (2 if self.clear_repeats else 1):
            return
        if self.control.estop:
            self.session.send(self.enc.control(MsgType.ESTOP))
            self.estop_sent_ns = now
        elif self.clear_repeats:
            self.session.send(self.enc.control(MsgType.CLEAR))
            self.clear_repeats -= 1
            self.estop_sent_ns = now

    # ---- stepping ----------------------------------------------------------------------------

    def _tick(self, now: int) -> None:
        robot = self.robot
        if self.need_start:
            self.need_start = False
            robot.start()
            return
        if robot.flags[0] & ENDED:  # the autoreset tick: no physics, no action applied
            robot.step(None)
            return
        timed_out = now - self.last_act_ns > self.act_timeout_ns
        if timed_out and not self.is_safe:
            self.is_safe = True
            self.safe_events += 1
            log.warning(
                "step %d: no ACT for %.0f ms: applying the safe action until the controller is back",
                robot.steps,
                (now - self.last_act_ns) / 1e6,
            )
        elif not timed_out and self.is_safe:
            self.is_safe = False
            log.warning("step %d: ACTs are arriving again: following the controller", robot.steps)
        if self.control.estop:
            self.estop_steps += 1
        elif timed_out:
            self.safe_steps += 1
        elif not self.fresh_act and not self.act_estop:
            self.held += 1
        robot.step(None if self.control.estop or timed_out or self.act_estop else self.latest)

    def _send_observation(self) -> None:
        r = self.robot
        frame = self.enc.obs(
            r.obs[0], r.rewards[0], flags=int(r.flags[0]), episode=int(r.slot_episode[0]), step=int(r.slot_step[0])
        )
        seq = self.enc.last_seq
        if r.flags[0] & ENDED:
            self.terminal_seq = seq
        self.obs_seq_by_step[seq] = r.steps
        self.obs_seq_by_step.pop(seq - 64, None)  # only recent OBS can be answered in time
        self.stream.send(frame)  # conflated and non-blocking: with no controller it is dropped

    def lag_summary(self) -> dict[str, float]:
        lags = self.lags[: min(self.lag_count, len(self.lags))]
        if not len(lags):
            return {}
        p50, p99 = np.percentile(lags, [50, 99])
        return {"n": int(len(lags)), "p50": float(p50), "p99": float(p99), "max": int(lags.max())}


def format_realtime_result(result: RealtimeServeResult) -> str:
    from policyrt.timing import format_table

    lines = [
        f"{result.env_id} (real-time, {result.rate_hz:g} Hz): stopped: {result.stop_reason} ({result.detail}); "
        f"{result.steps} steps"
    ]
    lines += episodes_line(result.returns, result.aborted_episodes)
    lines += limits_line(result)
    lines.append(
        f"ACTs: {result.acts} received, {result.held_steps} steps held the previous one, "
        f"{result.safe_steps} safe steps ({result.safe_events} time(s) gone safe), "
        f"e-stops: {result.estops} ({result.estop_steps} steps)"
    )
    if result.act_lag:
        lag = result.act_lag
        lines.append(
            f"ACT lag (steps from OBS to its ACT): p50 {lag['p50']:g}, p99 {lag['p99']:g}, max {lag['max']}"
        )
    errs = ", ".join(f"{k}={v}" for k, v in sorted(result.errors.items())) or "none"
    lines.append(f"protocol errors: {errs}")
    if result.jitter:
        lines.append(
            f"server tick-start jitter: p50 {result.jitter['p50_us']} us, p99 {result.jitter['p99_us']} us"
        )
    lines.append(format_table(result.timing))
    return "\n".join(lines)
