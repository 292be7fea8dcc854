"""The sim server: a Gymnasium MuJoCo environment behind the policyrt wire protocol.

It plays the robot: it binds the endpoint, answers a controller's HELLO with a SPEC, then sends an
OBS per tick and -- in lockstep mode -- waits for the ACT answering it before stepping the
environment. Episodes end on terminated/truncated (that OBS carries the flag and is not
answered); the environment is reset and the next OBS carries the reset flag.

A controller that goes silent for `controller_timeout_s` ends the run with a clear message
instead of a hang; malformed ACTs are counted per kind and logged once per kind.

`num_envs > 1` serves that many environments to one controller with batched frames
(sim/batched_server.py, docs/PROTOCOL.md section 10).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import zmq

from policyrt.link import Link
from policyrt.protocol import (
    MAX_FRAME_BYTES,
    MAX_NUM_ENVS,
    ActFlag,
    Encoder,
    ErrorTally,
    Message,
    MsgType,
    ObsFlag,
    ProtocolError,
    Spec,
    batch_frame_bytes,
)
from policyrt.timing import StageTimes, now_ns

log = logging.getLogger(__name__)

MODES = ("lockstep",)  # "realtime" is planned: see docs/PROTOCOL.md
_ESTOP = int(ActFlag.ESTOP)  # a plain int: `int & IntFlag` is slow on the per-step path
# first: seed the first reset, later resets continue the environment's RNG (the original scheme;
#        reproducible for one environment and a given controller).
# episode: episode k (counted over the whole run, not per slot) resets with episode_seed(seed, k),
#        so a run sees the same episodes whatever the number of environments or the policy.
SEEDINGS = ("first", "episode")


def episode_seed(seed: int, episode: int) -> int:
    """Reset seed of episode `episode` under the 'episode' seeding (docs/ARCHITECTURE.md, eval).

    A SeedSequence over (seed, episode) instead of seed + episode: runs with neighbouring seeds
    must not share shifted copies of the same episodes."""
    return int(np.random.SeedSequence([seed, episode]).generate_state(1)[0])


@dataclass(frozen=True)
class EpisodeStats:
    index: int
    episode_return: float
    length: int
    terminated: bool
    truncated: bool
    slot: int = 0  # which environment ran it (0 for a single-environment server)
    seed: int | None = None  # the reset seed; None where the episode continued the RNG


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

    @property
    def returns(self) -> list[float]:
        return [e.episode_return for e in self.episodes]

    def to_dict(self) -> dict:
        return asdict(self)


def _check_layout(num_envs: int, seeding: str) -> None:
    if seeding not in SEEDINGS:
        raise ValueError(f"unknown seeding {seeding!r}; available: {', '.join(SEEDINGS)}")
    if not 1 <= num_envs <= MAX_NUM_ENVS:
        raise ValueError(f"num_envs must be in 1..{MAX_NUM_ENVS}, got {num_envs}")
    if num_envs > 1 and seeding != "episode":
        raise ValueError("several environments need seeding 'episode': 'first' depends on which slot runs what")


def _check_frame_fits(spec: Spec) -> None:
    size = batch_frame_bytes(MsgType.OBS_BATCH, spec.num_envs, spec.obs_dim)
    if spec.num_envs > 1 and size > MAX_FRAME_BYTES:
        raise ValueError(
            f"{spec.num_envs} environments of obs_dim {spec.obs_dim} make {size}-byte OBS_BATCH frames; "
            f"receivers take at most {MAX_FRAME_BYTES}: use fewer environments"
        )


def make_env(env_id: str, **kwargs):
    import gymnasium  # the sim extra; imported here so result types load without it

    return gymnasium.make(env_id, **kwargs)


def spec_for_env(env_id: str, env, num_envs: int = 1) -> Spec:
    """Dims, rate and bounds from the spaces; actuator names from the MuJoCo model when present."""
    core = env.unwrapped
    act_names: tuple[str, ...] = ()
    model = getattr(core, "model", None)
    if model is not None:
        act_names = tuple(model.actuator(i).name for i in range(model.nu))
    dt = getattr(core, "dt", None)
    return Spec(
        obs_dim=int(np.prod(env.observation_space.shape)),
        act_dim=int(np.prod(env.action_space.shape)),
        control_rate_hz=(1.0 / dt) if dt else None,
        action_low=np.asarray(env.action_space.low, np.float32).ravel(),
        action_high=np.asarray(env.action_space.high, np.float32).ravel(),
        robot=env_id,
        act_names=act_names if len(act_names) == int(np.prod(env.action_space.shape)) else (),
        num_envs=num_envs,
    )


def serve(
    env_id: str,
    bind: str,
    mode: str = "lockstep",
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
) -> ServeResult:
    """Serve `env_id` on `bind` to one controller session and return what happened.

    episodes: stop after this many completed episodes (None: until the controller leaves).
    seed, seeding: see SEEDINGS; the default is 'first' for one environment (seeds the first
    reset, later resets continue the RNG, so a run is reproducible for a given controller) and
    'episode' for several. connect_timeout_s: how long to wait for the first HELLO (None:
    forever). results_path: also write the result as JSON there. spin_us: busy-poll for each ACT
    this long before blocking (benchmarks). num_envs: environments served at once in batched
    frames. stage_times_path: write the raw per-tick stage durations (.npz, ns) there. curve: a
    CURVE server setup (policyrt.controllers.auth.load_server) for the bound socket, or None.
    env_threads: threads stepping the environments of a batched server (None: 2 from 4
    environments up on a machine with 2+ cores, else 1). on_episode(stats): called as each
    episode ends (`policyrt sim serve --events` writes them out).
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not supported yet; available: {', '.join(MODES)}")
    seeding = seeding or ("first" if num_envs == 1 else "episode")
    _check_layout(num_envs, seeding)
    envs = [make_env(env_id, **(env_kwargs or {})) for _ in range(num_envs)]
    try:
        spec = spec_for_env(env_id, envs[0], num_envs)
        _check_frame_fits(spec)
        with Link(bind, bind=True, context=context, curve=curve) as link:
            if num_envs == 1:
                server = _LockstepServer(envs[0], spec, link, seed, spin_us, seeding)
            else:
                from .batched_server import BatchedLockstepServer

                if env_threads is None:
                    env_threads = 2 if num_envs >= 4 and (os.cpu_count() or 1) >= 2 else 1
                server = BatchedLockstepServer(envs, spec, link, seed, spin_us, env_threads)
            server.on_episode = on_episode
            try:
                stop, detail = server.run(episodes, controller_timeout_s, connect_timeout_s)
            finally:
                server.close()
            session_s = (now_ns() - server.t_start) / 1e9 if server.t_start else 0.0
    finally:
        for env in envs:
            env.close()
    if stage_times_path is not None:
        server.times.save(stage_times_path)
    result = ServeResult(
        env_id=env_id,
        bind=bind,
        seed=seed,
        stop_reason=stop,
        detail=detail,
        episodes=tuple(server.episodes),
        aborted_episodes=server.aborted,
        steps=server.steps,
        errors=dict(server.errors.counts),
        estops=server.estops,
        timing=server.times.summary(),
        num_envs=num_envs,
        seeding=seeding,
        session_s=round(session_s, 6),
    )
    (log.error if stop in ("controller_lost", "no_controller") else log.info)(
        "sim server stopped: %s", detail
    )
    if results_path is not None:
        Path(results_path).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result


class _SessionEnded(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class _LockstepServer:
    act_type = MsgType.ACT  # the message that answers an observation

    def __init__(self, env, spec: Spec, link: Link, seed: int, spin_us: int, seeding: str = "first"):
        self.env, self.spec, self.link, self.seed, self.seeding = env, spec, link, seed, seeding
        self.spin_ns = max(0, int(spin_us * 1000))
        link.obs_dim, link.act_dim = spec.obs_dim, spec.act_dim
        self.enc = Encoder(obs_dim=spec.obs_dim, act_dim=spec.act_dim)
        self.errors = ErrorTally(log, "sim server")
        self.times = StageTimes(("answer", "env_step"))
        self.action = np.zeros(env.action_space.shape, env.action_space.dtype)
        low, high = spec.bounds()
        # The sim's safe action under an e-stop: zero, or the bound nearest to it.
        self.safe_action = np.clip(np.zeros(spec.act_dim), low, high).reshape(self.action.shape)
        self.episodes: list[EpisodeStats] = []
        self.on_episode: Callable[[EpisodeStats], None] | None = None  # called as each episode ends
        self.aborted = self.steps = self.estops = 0
        self.episode = 0  # index of the running episode
        self.ep_return, self.ep_len = 0.0, 0
        self.pending = 0  # seq of the OBS waiting for its ACT
        self.t_sent = 0
        self.estop = False
        self.seeded = False
        self.t_start = 0  # now_ns() of the session's first OBS
        self.ep_seed: int | None = None  # reset seed of the running episode

    def close(self) -> None:
        """Nothing to release here; the batched server stops its stepping thread."""

    def run(self, episodes: int | None, timeout_s: float, connect_timeout_s: float | None) -> tuple[str, str]:
        ep = self.link.endpoint
        log.info(
            "serving %s on %s (lockstep): obs_dim %d, act_dim %d; waiting for a controller "
            "(e.g. `policyrt run BUNDLE --connect %s`)",
            self.spec.robot,
            ep,
            self.spec.obs_dim,
            self.spec.act_dim,
            ep,
        )
        try:
            hello = self._wait_hello(connect_timeout_s)
            if hello is None:
                return "no_controller", f"no controller said HELLO on {ep} within {connect_timeout_s:g} s"
            self._start_session(hello)
            while True:
                try:
                    msg = self._wait_act(timeout_s)
                except _SessionEnded as end:
                    self._abandon_episode()
                    return end.reason, end.detail
                if self._step(msg):
                    if episodes is not None and len(self.episodes) >= episodes:
                        self.link.send(self.enc.control(MsgType.BYE))
                        return "episodes_done", f"{len(self.episodes)} episode(s) completed as asked"
                    self._reset()
        except KeyboardInterrupt:
            self._abandon_episode()
            if self.seeded:  # a controller is there to tell; with none, the send would just wait
                self.link.send(self.enc.control(MsgType.BYE))
            return "interrupted", f"Ctrl-C after {self.steps} steps"

    def _wait_hello(self, timeout_s: float | None) -> Message | None:
        deadline = None if timeout_s is None else now_ns() + int(timeout_s * 1e9)
        while True:
            left = None if deadline is None else max(0, deadline - now_ns()) / 1e9
            try:
                msg = self.link.recv(left)
            except ProtocolError as exc:
                self.errors.add(exc)
                continue
            if msg is None:
                return None
            if msg.type is MsgType.HELLO:
                return msg
            if msg.type is not MsgType.HEARTBEAT:
                self.errors.add(ProtocolError("unexpected", f"{msg.type.name} before HELLO"))

    def _start_session(self, hello: Message) -> None:
        """SPEC answering the HELLO, then a fresh episode. A HELLO mid-session means the
        controller started over (restarted process): the running episode is abandoned."""
        self.link.send(self.enc.spec(self.spec, ack=hello.seq))
        self._abandon_episode()
        self.t_start = self.t_start or now_ns()
        self._reset()

    def _abandon_episode(self) -> None:
        if self.ep_len:
            self.aborted += 1
            self.ep_len = 0

    def _reset(self) -> None:
        if self.seeding == "episode":
            self.ep_seed = episode_seed(self.seed, self.episode)
        else:
            self.ep_seed = None if self.seeded else self.seed
        obs, _ = self.env.reset(seed=self.ep_seed)
        self.seeded = True
        self.ep_return, self.ep_len = 0.0, 0
        self._send_obs(obs, 0.0, ObsFlag.RESET)

    def _send_obs(self, obs, reward: float, flags: int) -> None:
        frame = self.enc.obs(np.ravel(obs), reward, flags=flags, episode=self.episode, step=self.ep_len)
        self.pending = self.enc.last_seq
        self.t_sent = now_ns()
        self.link.send(frame)  # a failed send shows up as the controller's silence below

    def _wait_act(self, timeout_s: float) -> Message:
        while True:
            try:
                msg = self.link.recv(timeout_s, self.spin_ns)
            except ProtocolError as exc:
                self.errors.add(exc)
                continue
            if msg is None:
                raise _SessionEnded(
                    "controller_lost",
                    f"no message from the controller for {timeout_s:g} s while waiting for "
                    f"{self._awaited()}: it disappeared or stalled; exiting",
                )
            mtype = msg.type
            if mtype is self.act_type:
                if msg.ack == self.pending:
                    return msg
                self.errors.add(
                    ProtocolError("stale", f"ACT answers seq {msg.ack}, waiting for {self.pending}")
                )
            elif mtype is MsgType.HELLO:
                log.warning("controller said HELLO again: starting a new session")
                self._start_session(msg)
            elif mtype is MsgType.BYE:
                raise _SessionEnded(
                    "controller_left", f"the controller ended the session after {self.steps} steps"
                )
            elif mtype is MsgType.ESTOP:
                self._set_estop(True)
            elif mtype is MsgType.CLEAR:
                self._set_estop(False)
            elif mtype is not MsgType.HEARTBEAT:
                self.errors.add(ProtocolError("unexpected", f"{mtype.name} from the controller"))

    def _awaited(self) -> str:
        return f"the ACT to OBS seq {self.pending} (episode {self.episode}, step {self.ep_len})"

    def _step(self, act: Message) -> bool:
        """Apply the ACT, step, send the next OBS. True when the episode ended (the caller
        decides whether another one starts)."""
        t_act = now_ns()
        if act.flags & _ESTOP:
            self._set_estop(True)
        if self.estop:
            self.action[...] = self.safe_action
        else:
            self.action[...] = act.values.reshape(self.action.shape)
        obs, reward, terminated, truncated, _ = self.env.step(self.action)
        self.times.record(t_act - self.t_sent, now_ns() - t_act)
        self.steps += 1
        self.ep_len += 1
        self.ep_return += float(reward)
        if not (terminated or truncated):
            self._send_obs(obs, reward, 0)
            return False
        flags = (ObsFlag.TERMINATED if terminated else 0) | (ObsFlag.TRUNCATED if truncated else 0)
        self._send_obs(obs, reward, flags)
        self.episodes.append(
            EpisodeStats(
                self.episode, self.ep_return, self.ep_len, bool(terminated), bool(truncated), 0, self.ep_seed
            )
        )
        if self.on_episode is not None:
            self.on_episode(self.episodes[-1])
        log.info("episode %d: return %.2f over %d steps", self.episode, self.ep_return, self.ep_len)
        self.episode += 1
        self.ep_len = 0
        return True

    def _set_estop(self, on: bool) -> None:
        if on and not self.estop:
            self.estops += 1
        if on != self.estop:
            log.warning(
                "emergency stop %s: %s",
                "latched" if on else "cleared",
                "holding the safe action" if on else "",
            )
        self.estop = on


def format_result(result: ServeResult) -> str:
    from policyrt.timing import format_table

    envs = f" x {result.num_envs} environments" if result.num_envs > 1 else ""
    lines = [f"{result.env_id}{envs}: stopped: {result.stop_reason} ({result.detail}); {result.steps} steps"]
    if result.episodes:
        rets = np.array(result.returns)
        lines.append(
            f"episodes: {len(rets)}, return mean {rets.mean():.2f} (min {rets.min():.2f}, max {rets.max():.2f})"
            + (f", {result.aborted_episodes} aborted" if result.aborted_episodes else "")
        )
    errs = ", ".join(f"{k}={v}" for k, v in sorted(result.errors.items())) or "none"
    lines.append(f"protocol errors: {errs}; e-stops: {result.estops}")
    lines.append(format_table(result.timing))
    return "\n".join(lines)
