"""The real-time sim server: a MuJoCo environment that behaves like a robot, not like a test rig.

Lockstep (sim/server.py) waits for every action, so a slow policy costs only wall-clock time. A
robot does not wait: its physics moves on whether the controller answered or not. This server
advances the environment by one control step per tick of a wall-clock scheduler at the
environment's control rate (or `rate_hz`, which rescales the physics timestep), applies the
latest ACT it has (zero-order hold), and publishes each new observation on the conflated stream
link. A policy that answers late acts on an old state and loses return; one that stops
answering is replaced by the robot's own safe action (zero, or the bound nearest to zero) once
no ACT came for `act_timeout_s` -- logged, counted, and undone by the next ACT.

Session control (docs/PROTOCOL.md, section 1, real-time mode):
- HELLO (from a new or restarted controller): SPEC, then a new episode starting with a RESET OBS;
- ESTOP / CLEAR, from the controller or an operator (`policyrt estop`), latch / release the
  robot's e-stop. While latched the server repeats ESTOP to its controller every
  `ESTOP_REPEAT_S`, and after a CLEAR it sends CLEAR a few times: a frame from the robot may be
  routed to an operator that is still connected (a DEALER deals frames round-robin), repeats
  make sure the controller hears it. An ACT flagged ESTOP is applied as the safe action but does
  not latch (the controller says it is stopped; only an explicit ESTOP latches);
- BYE ends the run; a controller that goes silent makes the server go safe and wait for a new
  HELLO, up to `controller_timeout_s`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import zmq

from policyrt.protocol import ActFlag, Encoder, ErrorTally, MsgType, ObsFlag, ProtocolError
from policyrt.scheduler import TickScheduler
from policyrt.stream import open_session_link, open_stream_link
from policyrt.timing import StageTimes

from .server import EpisodeStats, make_env, spec_for_env

log = logging.getLogger(__name__)

ESTOP_REPEAT_S = 0.2
CLEAR_REPEATS = 3
_ESTOP = int(ActFlag.ESTOP)
_MAX_FRAMES_PER_TICK = 256


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
) -> RealtimeServeResult:
    """Serve `env_id` in real time on `bind` (session link) and its stream endpoint.

    rate_hz: run the control step at this rate (rescaling the physics timestep); default: the
    environment's own rate. act_timeout_s: go safe when no ACT came for this long (default:
    5 control periods, at least 20 ms). Stops after `episodes` completed episodes, after
    `duration_s` of session time, on the controller's BYE, when no controller is connected for
    `controller_timeout_s`, or when none said HELLO within `connect_timeout_s` (None: wait).
    on_episode(stats): called as each episode ends.
    """
    env = make_env(env_id, **(env_kwargs or {}))
    try:
        dt = set_rate(env, rate_hz) if rate_hz else float(env.unwrapped.dt)
        spec = spec_for_env(env_id, env)
        server = _RealtimeServer(env, spec, dt, seed, act_timeout_s, spin_us)
        server.on_episode = on_episode
        with (
            open_session_link(bind, bind=True, context=context, curve=curve) as session,
            open_stream_link(bind, bind=True, context=context, curve=curve) as stream,
        ):
            server.attach(session, stream)
            stop, detail = server.run(episodes, duration_s, controller_timeout_s, connect_timeout_s)
    finally:
        env.close()
    result = RealtimeServeResult(
        env_id=env_id,
        bind=bind,
        rate_hz=round(1.0 / dt, 6),
        stop_reason=stop,
        detail=detail,
        episodes=tuple(server.episodes),
        aborted_episodes=server.aborted,
        steps=server.steps,
        acts=server.acts,
        held_steps=server.held,
        safe_steps=server.safe_steps,
        safe_events=server.safe_events,
        estops=server.estops,
        estop_steps=server.estop_steps,
        controller_sessions=server.sessions,
        errors=dict(server.errors.counts),
        act_lag=server.lag_summary(),
        jitter=server.sched.jitter_summary(),
        timing=server.times.summary(),
    )
    (log.error if stop in ("controller_lost", "no_controller") else log.info)(
        "sim server stopped: %s", detail
    )
    if results_path is not None:
        Path(results_path).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result


class _RealtimeServer:
    def __init__(self, env, spec, dt: float, seed: int, act_timeout_s: float | None, spin_us: float):
        self.env, self.spec, self.dt, self.seed = env, spec, dt, seed
        self.sched = TickScheduler(1.0 / dt, spin_us=spin_us)
        timeout = act_timeout_s if act_timeout_s is not None else max(5 * dt, 0.02)
        self.act_timeout_ns = int(timeout * 1e9)
        self.enc = Encoder(obs_dim=spec.obs_dim, act_dim=spec.act_dim)
        self.errors = ErrorTally(log, "real-time sim server")
        self.times = StageTimes(("receive", "env_step", "send"))
        self.action = np.zeros(env.action_space.shape, env.action_space.dtype)
        self.latest = np.zeros(spec.act_dim, np.float32)  # the newest ACT's action
        low, high = spec.bounds()
        self.safe_action = np.clip(np.zeros(spec.act_dim), low, high).reshape(self.action.shape)
        self.episodes: list[EpisodeStats] = []
        self.on_episode: Callable[[EpisodeStats], None] | None = None  # called as each episode ends
        self.aborted = self.steps = self.acts = self.held = 0
        self.safe_steps = self.safe_events = self.estops = self.estop_steps = self.sessions = 0
        self.lags = np.zeros(1 << 17, np.int64)
        self.lag_count = 0
        self.episode = -1
        self.ep_return, self.ep_len = 0.0, 0
        self.connected = False  # a controller said HELLO and has not said BYE
        self.last_act_ns = 0  # receive time of the newest ACT (or of the HELLO, before the first)
        self.last_contact_ns = 0  # any frame from the controller
        self.fresh_act = False
        self.act_estop = False  # the newest ACT carries the ESTOP flag
        self.is_safe = False
        self.estop = False
        self.estop_sent_ns = 0
        self.clear_repeats = 0
        self.need_reset = True
        self.seeded = False
        self.obs_seq_by_step: dict[int, int] = {}

    def attach(self, session, stream) -> None:
        self.session, self.stream = session, stream
        for link in (session, stream):
            link.obs_dim, link.act_dim = self.spec.obs_dim, self.spec.act_dim

    def run(self, episodes, duration_s, controller_timeout_s, connect_timeout_s) -> tuple[str, str]:
        ep = self.session.endpoint
        log.info(
            "serving %s on %s (real-time, %.4g Hz, stream on %s): waiting for a controller "
            "(e.g. `policyrt run BUNDLE --connect %s --mode realtime --rate %.4g`)",
            self.spec.robot,
            ep,
            1.0 / self.dt,
            self.stream.endpoint,
            ep,
            1.0 / self.dt,
        )
        sched = self.sched
        clock = sched._clock
        t_begin = clock()
        lost_ns = int(controller_timeout_s * 1e9)
        duration_ticks = None if duration_s is None else int(round(duration_s / self.dt))
        session_ticks = 0
        sched.start()
        try:
            while True:
                sched.wait()
                now = clock()
                self._receive(now)
                t_recv = clock()
                if self.stop_reason is not None:
                    return self.stop_reason
                if not self.sessions:
                    if connect_timeout_s is not None and now - t_begin > connect_timeout_s * 1e9:
                        return (
                            "no_controller",
                            f"no controller said HELLO on {ep} within {connect_timeout_s:g} s",
                        )
                    continue
                if now - self.last_contact_ns > lost_ns:
                    return "controller_lost", (
                        f"no message from any controller for {controller_timeout_s:g} s after {self.steps} steps; exiting"
                    )
                self._repeat_estop(now)
                self._tick(now)
                t_step = clock()
                self.times.record(t_recv - now, t_step - t_recv, clock() - t_step)
                session_ticks += 1
                if episodes is not None and len(self.episodes) >= episodes:
                    return "episodes_done", f"{len(self.episodes)} episode(s) completed as asked"
                if duration_ticks is not None and session_ticks >= duration_ticks:
                    return "duration", f"ran the requested {duration_s:g} s ({session_ticks} steps)"
        except KeyboardInterrupt:
            return "interrupted", f"interrupted after {self.steps} steps"
        finally:
            self._abandon_episode()
            if self.connected:
                self.session.send(self.enc.control(MsgType.BYE))

    stop_reason = None

    # ---- receiving ---------------------------------------------------------------------------

    def _receive(self, now: int) -> None:
        self.fresh_act = False
        for msg in self.session.pending(_MAX_FRAMES_PER_TICK, self.errors):
            self._control(msg, now)
        for msg in self.stream.pending(_MAX_FRAMES_PER_TICK, self.errors):
            if msg.type is not MsgType.ACT:
                self.errors.add(ProtocolError("unexpected", f"{msg.type.name} on the action stream"))
                continue
            if not self.connected:
                self.errors.add(ProtocolError("unexpected", "ACT without a controller session (no HELLO)"))
                continue
            self.latest[:] = msg.values
            self.act_estop = bool(msg.flags & _ESTOP)
            self.last_act_ns = self.last_contact_ns = now
            self.fresh_act = True
            self.acts += 1
            sent_at = self.obs_seq_by_step.get(msg.ack)
            if sent_at is not None:
                self.lags[self.lag_count % len(self.lags)] = self.steps - sent_at
                self.lag_count += 1

    def _control(self, msg, now: int) -> None:
        mtype = msg.type
        if mtype is MsgType.HELLO:
            if self.sessions:
                log.warning("a controller said HELLO: starting a new session (episode abandoned)")
            self.session.send(self.enc.spec(self.spec, ack=msg.seq))
            self.sessions += 1
            self.connected = True
            self.last_contact_ns = now
            self.last_act_ns = now  # a controller that said HELLO owes ACTs from now on
            self._abandon_episode()
            self.need_reset = True
        elif mtype is MsgType.ESTOP:
            if not self.estop:
                self.estop = True
                self.estops += 1
                self.estop_sent_ns = 0  # tell the controller at once
                log.warning(
                    "step %d: emergency stop latched: applying the safe action until CLEAR", self.steps
                )
        elif mtype is MsgType.CLEAR:
            if self.estop:
                self.estop = False
                self.clear_repeats = CLEAR_REPEATS
                self.estop_sent_ns = 0
                log.warning("step %d: emergency stop cleared", self.steps)
        elif mtype is MsgType.BYE:
            if self.connected:
                self.connected = False
                self.stop_reason = (
                    "controller_left",
                    f"the controller ended the session after {self.steps} steps",
                )
        elif mtype is MsgType.HEARTBEAT:
            self.last_contact_ns = now
        else:
            self.errors.add(
                ProtocolError("unexpected", f"{mtype.name} from a controller on the session link")
            )

    def _repeat_estop(self, now: int) -> None:
        """Tell the controller the e-stop state, repeatedly (see the module docstring)."""
        if now - self.estop_sent_ns < ESTOP_REPEAT_S * 1e9 / (2 if self.clear_repeats else 1):
            return
        if self.estop:
            self.session.send(self.enc.control(MsgType.ESTOP))
            self.estop_sent_ns = now
        elif self.clear_repeats:
            self.session.send(self.enc.control(MsgType.CLEAR))
            self.clear_repeats -= 1
            self.estop_sent_ns = now

    # ---- stepping ----------------------------------------------------------------------------

    def _tick(self, now: int) -> None:
        if self.need_reset:
            self._reset()
            return
        timed_out = now - self.last_act_ns > self.act_timeout_ns
        if timed_out and not self.is_safe:
            self.is_safe = True
            self.safe_events += 1
            log.warning(
                "step %d: no ACT for %.0f ms: applying the safe action until the controller is back",
                self.steps,
                (now - self.last_act_ns) / 1e6,
            )
        elif not timed_out and self.is_safe:
            self.is_safe = False
            log.warning("step %d: ACTs are arriving again: following the controller", self.steps)
        if self.estop:
            self.action[...] = self.safe_action
            self.estop_steps += 1
        elif timed_out:
            self.action[...] = self.safe_action
            self.safe_steps += 1
        elif self.act_estop:
            self.action[...] = self.safe_action
        else:
            self.action[...] = self.latest.reshape(self.action.shape)
            if not self.fresh_act:
                self.held += 1
        obs, reward, terminated, truncated, _ = self.env.step(self.action)
        self.steps += 1
        self.ep_len += 1
        self.ep_return += float(reward)
        flags = (ObsFlag.TERMINATED if terminated else 0) | (ObsFlag.TRUNCATED if truncated else 0)
        self._send_obs(obs, float(reward), int(flags))
        if terminated or truncated:
            self.episodes.append(
                EpisodeStats(self.episode, self.ep_return, self.ep_len, bool(terminated), bool(truncated))
            )
            if self.on_episode is not None:
                self.on_episode(self.episodes[-1])
            log.info("episode %d: return %.2f over %d steps", self.episode, self.ep_return, self.ep_len)
            self.ep_len = 0
            self.need_reset = True

    def _reset(self) -> None:
        obs, _ = self.env.reset(seed=None if self.seeded else self.seed)
        self.seeded = True
        self.need_reset = False
        self.episode += 1
        self.ep_return, self.ep_len = 0.0, 0
        self._send_obs(obs, 0.0, int(ObsFlag.RESET))

    def _send_obs(self, obs, reward: float, flags: int) -> None:
        frame = self.enc.obs(np.ravel(obs), reward, flags=flags, episode=self.episode, step=self.ep_len)
        seq = self.enc.last_seq
        self.obs_seq_by_step[seq] = self.steps
        self.obs_seq_by_step.pop(seq - 64, None)  # only recent OBS can be answered in time
        self.stream.send(frame)  # conflated and non-blocking: with no controller it is dropped

    def _abandon_episode(self) -> None:
        if self.ep_len:
            self.aborted += 1
            self.ep_len = 0

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
    if result.episodes:
        rets = np.array(result.returns)
        lines.append(
            f"episodes: {len(rets)}, return mean {rets.mean():.2f} (min {rets.min():.2f}, max {rets.max():.2f})"
            + (f", {result.aborted_episodes} aborted" if result.aborted_episodes else "")
        )
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
