"""The lockstep sim server: the sim robot of P environments behind the wire protocol, one tick per ACT.

It plays the robot: it binds the endpoint, answers a controller's HELLO with a SPEC, then sends the
robot's observations (OBS for one environment, OBS_BATCH for P > 1, docs/PROTOCOL.md section 10)
and waits for the ACT (ACT_BATCH) answering them before stepping. Every observation is answered,
terminal ones included: the robot ignores a terminal row's action and resets that slot on the tick
it answers (sim/robot.py; protocol version 2). A HELLO mid-session means the controller started
over: the running episodes are abandoned and played again. ACTs answering another observation are
dropped as `stale`; malformed frames are counted per kind and logged once per kind.

The run ends after the requested episodes (BYE), on the controller's BYE, when the controller is
silent for `controller_timeout_s` (with a clear message instead of a hang), when no controller said
HELLO within `connect_timeout_s`, or on a stop request (SIGINT/SIGTERM: BYE to the controller).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import zmq

from policyrt.link import Link
from policyrt.protocol import ActFlag, Encoder, ErrorTally, Message, MsgType, ProtocolError
from policyrt.session_control import Control, SessionControl, send_final_bye
from policyrt.stopping import STOP, StopRequest
from policyrt.timing import StageTimes, now_ns

from .robot import (
    EpisodeStats,
    SimRobot,
    check_frame_fits,
    check_layout,
    episodes_line,
    finish,
    limits_line,
    make_env,
    spec_for_env,
)

log = logging.getLogger(__name__)

_ESTOP = int(ActFlag.ESTOP)  # a plain int: `int & IntFlag` is slow on the per-step path


@dataclass(frozen=True)
class ServeResult:
    env_id: str
    bind: str
    seed: int
    stop_reason: (
        str  # "episodes_done" | "controller_left" | "controller_lost" | "no_controller" | "interrupted"
    )
    detail: str
    episodes: tuple[EpisodeStats, ...]  # completed episodes only
    aborted_episodes: int  # cut short by the controller leaving, vanishing or starting over
    steps: int  # environment steps taken
    errors: dict[str, int]  # rejected controller messages per kind
    estops: int  # times an emergency stop was latched
    timing: dict[str, dict[str, float]]  # "answer": OBS sent -> its ACT decoded; "env_step"
    num_envs: int = 1
    seeding: str = "first"
    session_s: float = 0.0  # from the first OBS sent to the stop: steps / session_s is steps/s
    clamped_actions: int = 0  # applied actions outside the announced bounds, clamped to them
    nonfinite_steps: int = 0  # steps whose observation or reward was not finite: episode cut

    @property
    def returns(self) -> list[float]:
        return [e.episode_return for e in self.episodes]

    def to_dict(self) -> dict:
        return asdict(self)


def serve(
    env_id: str,
    bind: str,
    episodes: int | None = None,
    seed: int = 0,
    controller_timeout_s: float = 10.0,
    connect_timeout_s: float | None = None,
    results_path: str | Path | None = None,
    env_kwargs: dict | None = None,
    spin_us: int = 0,
    context: zmq.Context | None = None,
    num_envs: int = 1,
    seeding: str | None = None,
    stage_times_path: str | Path | None = None,
    curve=None,
    env_threads: int | None = None,
    on_episode: Callable[[EpisodeStats], None] | None = None,
    stop: StopRequest | None = STOP,
) -> ServeResult:
    """Serve `env_id` in lockstep on `bind` to one controller session and return what happened.

    episodes: stop after this many completed episodes (None: until the controller leaves).
    seed, seeding: see sim/robot.py SEEDINGS; the default is 'first' for one environment (seeds the
    first reset, later resets continue the RNG, so a run is reproducible for a given controller)
    and 'episode' for several. connect_timeout_s: how long to wait for the first HELLO (None:
    forever). results_path: also write the result as JSON there. spin_us: busy-poll for each ACT
    this long before blocking (benchmarks). num_envs: environments served at once in batched
    frames. stage_times_path: write the raw per-tick stage durations (.npz, ns) there. curve: a
    CURVE server setup (policyrt.controllers.auth.load_server) for the bound socket, or None.
    env_threads: threads stepping the environments (None: 2 from 4 environments up on a machine
    with 2+ cores, else 1). on_episode: called with each finished episode's stats. stop: ends the
    run ("interrupted") when requested; None: only the session ends it.
    """
    seeding = seeding or ("first" if num_envs == 1 else "episode")
    check_layout(num_envs, seeding, episodes)
    if env_threads is None:
        env_threads = 2 if num_envs >= 4 and (os.cpu_count() or 1) >= 2 else 1
    envs = [make_env(env_id, **(env_kwargs or {})) for _ in range(num_envs)]
    try:
        spec = spec_for_env(env_id, envs[0], num_envs)
        check_frame_fits(spec)
        robot = SimRobot(envs, spec, seed=seed, seeding=seeding, episodes=episodes, env_threads=env_threads,
                         on_episode=on_episode)
        try:
            with Link(bind, bind=True, context=context, curve=curve, stop=stop) as link:
                driver = LockstepDriver(robot, link, spin_us, stop)
                reason, detail = driver.run(controller_timeout_s, connect_timeout_s)
                session_s = (now_ns() - driver.t_start) / 1e9 if driver.t_start else 0.0
        finally:
            robot.close()
    finally:
        for env in envs:
            env.close()
    if stage_times_path is not None:
        driver.times.save(stage_times_path)
    result = ServeResult(
        env_id=env_id,
        bind=bind,
        seed=seed,
        stop_reason=reason,
        detail=detail,
        episodes=tuple(robot.episodes),
        aborted_episodes=robot.aborted,
        steps=robot.steps,
        errors=dict(driver.errors.counts),
        estops=driver.control.estops,
        timing=driver.times.summary(),
        num_envs=num_envs,
        seeding=seeding,
        session_s=round(session_s, 6),
        clamped_actions=robot.clamped_actions,
        nonfinite_steps=robot.nonfinite_steps,
    )
    return finish(result, results_path)


class LockstepDriver:
    """Receives, answers HELLO, steps the robot on each answering ACT, sends what it shows next."""

    def __init__(self, robot: SimRobot, link: Link, spin_us: int = 0, stop: StopRequest | None = None):
        spec = robot.spec
        self.robot, self.link, self.stop = robot, link, stop
        self.batched = robot.num_envs > 1
        self.act_type = MsgType.ACT_BATCH if self.batched else MsgType.ACT  # answers an observation
        self.spin_ns = max(0, int(spin_us * 1000))
        link.obs_dim, link.act_dim = spec.obs_dim, spec.act_dim
        if self.batched:
            link.num_envs = robot.num_envs
        self.enc = Encoder(obs_dim=spec.obs_dim, act_dim=spec.act_dim, num_envs=robot.num_envs)
        self.errors = ErrorTally(log, "sim server")
        self.control = SessionControl("robot", self.errors, log, where=lambda: f"step {self.robot.steps}")
        self.times = StageTimes(("answer", "env_step"))
        self.pending = 0  # seq of the observation waiting for its answer
        self.t_sent = 0
        self.t_start = 0  # now_ns() of the session's first observation

    def run(self, timeout_s: float, connect_timeout_s: float | None) -> tuple[str, str]:
        ep, spec = self.link.endpoint, self.robot.spec
        log.info(
            "serving %s on %s (lockstep%s): obs_dim %d, act_dim %d; waiting for a controller "
            "(e.g. `policyrt run BUNDLE --connect %s`)",
            spec.robot, ep, f", {self.robot.num_envs} environments" if self.batched else "",
            spec.obs_dim, spec.act_dim, ep,
        )
        deadline = None if connect_timeout_s is None else now_ns() + int(connect_timeout_s * 1e9)
        try:
            while True:
                connected = self.control.connected
                if connected:  # any frame resets the silence timer; the connect deadline is fixed
                    wait = timeout_s
                else:
                    wait = None if deadline is None else max(0, deadline - now_ns()) / 1e9
                try:
                    msg = self.link.recv(wait, self.spin_ns if connected else 0)
                except ProtocolError as exc:
                    self.errors.add(exc)
                    continue
                if msg is None:
                    return self._silence(timeout_s, connect_timeout_s)
                if msg.type is self.act_type and connected:
                    if msg.ack != self.pending:
                        self.errors.add(
                            ProtocolError("stale", f"{msg.type.name} answers seq {msg.ack}, waiting for {self.pending}")
                        )
                    elif self._tick(msg):
                        send_final_bye(self.link, self.enc)
                        return "episodes_done", f"{len(self.robot.episodes)} episode(s) completed as asked"
                    continue
                what = self.control.handle(msg)
                if what is Control.HELLO:
                    self._start_session(msg)
                elif what is Control.BYE:
                    return "controller_left", f"the controller ended the session after {self.robot.steps} steps"
        finally:
            self.robot.abandon()

    def _silence(self, timeout_s: float, connect_timeout_s: float | None) -> tuple[str, str]:
        """A receive returned nothing: a stop request, or the peer's silence."""
        if self.stop is not None and self.stop.requested:
            if self.control.connected:  # a controller is there to tell; with none, the send would wait
                send_final_bye(self.link, self.enc)
            return "interrupted", f"stopped by {self.stop.reason} after {self.robot.steps} steps"
        if not self.control.connected:
            return "no_controller", f"no controller said HELLO on {self.link.endpoint} within {connect_timeout_s:g} s"
        return "controller_lost", (
            f"no message from the controller for {timeout_s:g} s while waiting for {self._awaited()}: "
            "it disappeared or stalled; exiting"
        )

    def _awaited(self) -> str:
        robot = self.robot
        if not self.batched:
            return f"the ACT to OBS seq {self.pending} (episode {robot.slot_episode[0]}, step {robot.slot_step[0]})"
        return (
            f"the ACT_BATCH to OBS_BATCH seq {self.pending} ({robot.live_slots} of {robot.num_envs} slots "
            "running; a controller that predates batched sessions cannot answer OBS_BATCH)"
        )

    def _start_session(self, hello: Message) -> None:
        """SPEC answering the HELLO, then fresh episodes. A HELLO mid-session means the controller
        started over (restarted process): the running episodes are abandoned."""
        if self.t_start:
            log.warning("controller said HELLO again: starting a new session")
        self.link.send(self.enc.spec(self.robot.spec, ack=hello.seq))
        self.robot.start()
        self.t_start = self.t_start or now_ns()
        self._send_observation()

    def _tick(self, act: Message) -> bool:
        """Apply the answering ACT, step, send the next observation; True once every requested
        episode ended (the caller says BYE instead of waiting for another answer)."""
        t_act = now_ns()
        flagged = (act.slots[0] & _ESTOP).any() if self.batched else act.flags & _ESTOP
        if flagged:  # in lockstep an ACT flagged ESTOP latches like an ESTOP message
            self.control.set_estop(True)
        self.robot.step(None if self.control.estop else act.values)
        self.times.record(t_act - self.t_sent, now_ns() - t_act)
        self._send_observation()
        return self.robot.done

    def _send_observation(self) -> None:
        r = self.robot
        if self.batched:
            frame = self.enc.obs_batch(r.obs, r.rewards, r.flags, r.slot_episode, r.slot_step)
        else:
            frame = self.enc.obs(
                r.obs[0], r.rewards.item(0), flags=r.flags.item(0), episode=r.slot_episode.item(0), step=r.slot_step.item(0)
            )
        self.pending = self.enc.last_seq
        self.t_sent = now_ns()
        self.link.send(frame)  # a failed send shows up as the controller's silence


def format_result(result: ServeResult) -> str:
    from policyrt.timing import format_table

    envs = f" x {result.num_envs} environments" if result.num_envs > 1 else ""
    lines = [f"{result.env_id}{envs}: stopped: {result.stop_reason} ({result.detail}); {result.steps} steps"]
    lines += episodes_line(result.returns, result.aborted_episodes)
    lines += limits_line(result)
    errs = ", ".join(f"{k}={v}" for k, v in sorted(result.errors.items())) or "none"
    lines.append(f"protocol errors: {errs}; e-stops: {result.estops}")
    lines.append(format_table(result.timing))
    return "\n".join(lines)
