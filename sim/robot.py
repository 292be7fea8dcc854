"""One sim robot of P environments: Gymnasium MuJoCo environments that end and restart on their own.

`SimRobot` holds what the robot would send next -- one row per environment ("slot"): the
observation, the reward of the tick that led to it, per-slot flags, episode and step -- and
advances every slot by one tick with `step(actions)`. The drivers decide when a tick happens: the
lockstep driver (sim/lockstep_driver.py) when the ACT answering the last observation arrived, the
real-time one (sim/realtime_driver.py) on the wall clock. P = 1 is just P: the same robot, sent as
OBS instead of OBS_BATCH.

Autoreset: Gymnasium's `AutoresetMode.NEXT_STEP` (gymnasium/vector/sync_vector_env.py). A slot whose
episode ended sends its terminal row (TERMINATED/TRUNCATED, final observation and reward); on the
next tick its action is ignored -- it is no environment step -- and the slot either starts its next
episode (a RESET row, reward 0) or, once every requested episode has been handed out, goes IDLE.
This is the terminal-observation rule of protocol version 2 (docs/PROTOCOL.md, section 5).

Limits, as a robot's driver enforces them: every applied action is clamped to the bounds the robot
announced in its SPEC (counted: `clamped_actions`; values up to 3.4e38 never reach MuJoCo), and no
non-finite value is ever sent: a step whose observation or reward does not fit a float32 (NaN,
infinity, or a float64 beyond 3.4e38) ends that episode as TRUNCATED with the last finite
observation and reward 0 (counted: `nonfinite_steps`, logged once); the next tick resets it.

Episodes are numbered over the whole run. Exactly `episodes` are started, so none is lost or
counted twice; a controller that starts over abandons the running ones, and their numbers are
played again (with their seeds, under 'episode' seeding) before new ones.
"""

from __future__ import annotations

import heapq
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policyrt.protocol import MAX_FRAME_BYTES, SlotFlag, data_frame_bytes
from policyrt.spec import MAX_NUM_ENVS, Spec

log = logging.getLogger(__name__)

# first: seed the first reset, later resets continue the environment's RNG (the original scheme;
#        reproducible for one environment and a given controller).
# episode: episode k (counted over the whole run, not per slot) resets with episode_seed(seed, k),
#        so a run sees the same episodes whatever the number of environments or the policy.
SEEDINGS = ("first", "episode")
# Stop reasons after which the command exits 1: nobody (or nobody any more) to serve.
FAILED_STOPS = ("controller_lost", "no_controller")

# Plain ints: `int & IntFlag` goes through the enum machinery on the per-step path.
_RESET, _IDLE = int(SlotFlag.RESET), int(SlotFlag.IDLE)
_TERMINATED, _TRUNCATED = int(SlotFlag.TERMINATED), int(SlotFlag.TRUNCATED)
ENDED = _TERMINATED | _TRUNCATED
_WORK_NONE, _WORK_STEP, _WORK_RESET = 0, 1, 2
_F32_MAX = float(np.finfo(np.float32).max)  # a larger float64 becomes infinity on the wire


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
    slot: int = 0  # which environment ran it (0 for a single-environment robot)
    seed: int | None = None  # the reset seed; None where the episode continued the RNG
    clamped_actions: int = 0  # actions outside the announced bounds, applied clamped to them
    nonfinite_cut: bool = False  # ended (TRUNCATED) because a step's observation or reward was not finite


def check_layout(num_envs: int, seeding: str, episodes: int | None) -> None:
    if seeding not in SEEDINGS:
        raise ValueError(f"unknown seeding {seeding!r}; available: {', '.join(SEEDINGS)}")
    if not 1 <= num_envs <= MAX_NUM_ENVS:
        raise ValueError(f"num_envs must be in 1..{MAX_NUM_ENVS}, got {num_envs}")
    if num_envs > 1 and seeding != "episode":
        raise ValueError("several environments need seeding 'episode': 'first' depends on which slot runs what")
    if episodes is not None and episodes < 1:
        raise ValueError(f"episodes must be at least 1 (or None: until the controller leaves), got {episodes}")


def check_frame_fits(spec: Spec) -> None:
    """Refuse a layout whose frames no receiver would take (its SPEC would be refused as `spec`)."""
    size = data_frame_bytes(spec)
    if size > MAX_FRAME_BYTES:
        raise ValueError(
            f"{spec.num_envs} environment(s) of obs_dim {spec.obs_dim}, act_dim {spec.act_dim} make {size}-byte "
            f"frames; receivers take at most {MAX_FRAME_BYTES}: use fewer environments"
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


@dataclass
class _Running:
    """The episode a slot is playing."""

    index: int
    seed: int | None
    ep_return: float = 0.0
    length: int = 0
    clamped: int = 0


class SimRobot:
    """P environments with one autoreset rule, episode accounting and the robot's safe action.

    episodes: start exactly this many (None: no limit); `done` once all ended. on_episode: called
    with each finished episode's EpisodeStats. env_threads: 2 steps the second half of the slots on
    a helper thread (MuJoCo's mj_step releases the GIL); what each slot does is decided in slot
    order first, so the frames are the same bit for bit whatever the threads.
    """

    def __init__(
        self,
        envs: list,
        spec: Spec,
        *,
        seed: int = 0,
        seeding: str = "first",
        episodes: int | None = None,
        env_threads: int = 1,
        on_episode: Callable[[EpisodeStats], None] | None = None,
    ):
        check_layout(len(envs), seeding, episodes)
        n = len(envs)
        self.envs, self.spec, self.num_envs = envs, spec, n
        self.seed, self.seeding, self.quota, self.on_episode = seed, seeding, episodes, on_episode
        # What the robot sends next, assembled in place (the drivers encode these arrays).
        self.obs = np.zeros((n, spec.obs_dim), np.float32)
        self.rewards = np.zeros(n, np.float64)  # float64: returns sum the environment's own rewards
        self.flags = np.zeros(n, np.uint32)
        self.slot_episode = np.zeros(n, np.uint32)
        self.slot_step = np.zeros(n, np.uint32)
        shape, dtype = envs[0].action_space.shape, envs[0].action_space.dtype
        self.actions = np.zeros((n, *shape), dtype)  # applied this tick
        self._actions_flat = self.actions.reshape(-1)  # a view: one copy of a message's values
        low, high = spec.bounds()
        self._low, self._high = low.astype(dtype), high.astype(dtype)  # what clamp() enforces
        # The robot's safe action (e-stop, silent controller): zero, or the bound nearest to it.
        self.safe_action = np.clip(np.zeros(spec.act_dim), low, high).reshape(shape)
        self.clamped_actions = 0  # applied actions that were outside the bounds (clamped)
        self.nonfinite_steps = 0  # steps whose observation or reward was not finite (episode cut)
        self._cut = [False] * n  # this tick's step of the slot was not finite (set by _env_work)
        self.running: list[_Running | None] = [None] * n
        self.episodes: list[EpisodeStats] = []  # completed, in the order they ended
        self.aborted = self.steps = 0
        self._next_episode = 0
        self._redo: list[int] = []  # indices of abandoned episodes, replayed before new ones
        self._seeded = False  # 'first' seeding: the first reset took the seed
        self._work = [_WORK_NONE] * n  # what each slot does this tick (plain ints, like the loops below)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="env-step") if env_threads > 1 and n > 1 else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    @property
    def done(self) -> bool:
        """Every requested episode ended."""
        return self.quota is not None and len(self.episodes) >= self.quota

    @property
    def live_slots(self) -> int:
        return sum(r is not None for r in self.running)

    def start(self) -> None:
        """A (new) session: abandon what runs, then every slot starts an episode (or idles)."""
        self.abandon()
        for i in range(self.num_envs):
            self._assign_slot(i)
            if self.running[i] is not None:
                self._reset_env(i)

    def abandon(self) -> None:
        """A controller that starts over or leaves abandons every running episode; their indices
        are played again if the session goes on. One that had not stepped is not counted aborted."""
        for i, run in enumerate(self.running):
            if run is not None:
                self.aborted += run.length > 0
                heapq.heappush(self._redo, run.index)
                self.running[i] = None

    def step(self, actions: np.ndarray | None) -> None:
        """One tick (None: the safe action for every slot). Three phases: decide each slot's work
        in slot order (which episode a restarting slot takes must not depend on timing), do the
        environment work -- resets and steps, the expensive part -- on the stepping threads, then
        account in slot order."""
        work, running = self._work, self.running
        # Plain ints from here on: a numpy scalar costs ~0.1 us per operation, which one robot
        # pays on every lockstep round trip.
        for i, slot_flags in enumerate(self.flags.tolist()):
            if slot_flags & ENDED:  # its terminal row went out last tick: NEXT_STEP autoreset
                self._assign_slot(i)
                work[i] = _WORK_RESET if running[i] is not None else _WORK_NONE
            else:
                work[i] = _WORK_STEP if running[i] is not None else _WORK_NONE
        if actions is None:
            self.actions[:] = self.safe_action
        else:
            self._actions_flat[:] = actions.reshape(-1)
            self.clamp(self.actions, in_step=True)
        n = self.num_envs
        if self._pool is None:
            self._env_work(0, n)
        else:  # the physics of the two halves overlaps
            half = (n + 1) // 2
            other = self._pool.submit(self._env_work, half, n)
            self._env_work(0, half)
            other.result()
        for i, slot_work in enumerate(work):
            if slot_work == _WORK_STEP:
                self._account_step(i)

    def clamp(self, actions: np.ndarray, in_step: bool = False) -> int:
        """Clamp `actions` (one row per slot, in place) into the announced bounds, as a robot's
        driver does; count the rows that were outside and are applied: in `step`, the slots that
        step this tick (an answer to a terminal row is ignored); otherwise (the real-time driver
        clamps its slot's ACT on receipt) the slots running an episode. Returns that count."""
        rows = actions.reshape(self.num_envs, -1)
        low, high = self._low, self._high
        if ((rows >= low) & (rows <= high)).all():  # the usual case: two comparisons, no counting
            return 0
        outside = np.flatnonzero(~((rows >= low) & (rows <= high)).all(axis=1))
        np.clip(rows, low, high, out=rows)
        counted = 0
        for i in outside.tolist():
            run = self.running[i]
            if run is not None and (not in_step or self._work[i] == _WORK_STEP):
                run.clamped += 1
                counted += 1
        if counted and not self.clamped_actions:
            log.warning(
                "an action outside the announced bounds (low %s, high %s) was clamped to them; "
                "further ones are only counted", low.tolist(), high.tolist(),
            )
        self.clamped_actions += counted
        return counted

    # ---- slots -------------------------------------------------------------------------------

    def _take_episode(self) -> int | None:
        if self._redo:
            return heapq.heappop(self._redo)
        if self.quota is not None and self._next_episode >= self.quota:
            return None
        self._next_episode += 1
        return self._next_episode - 1

    def _reset_seed(self, index: int) -> int | None:
        if self.seeding == "episode":
            return episode_seed(self.seed, index)
        seed = None if self._seeded else self.seed
        self._seeded = True
        return seed

    def _assign_slot(self, i: int) -> None:
        """The slot's next episode (its RESET row; the reset itself is the caller's) or IDLE."""
        index = self._take_episode()
        self.rewards[i] = 0.0
        if index is None:
            self.running[i] = None
            self.obs[i] = 0.0
            self.flags[i], self.slot_episode[i], self.slot_step[i] = _IDLE, 0, 0
            return
        self.running[i] = _Running(index, self._reset_seed(index))
        self.flags[i], self.slot_episode[i], self.slot_step[i] = _RESET, index, 0

    def _reset_env(self, i: int) -> None:
        obs, _ = self.envs[i].reset(seed=self.running[i].seed)
        if _fits_float32(obs):
            self.obs[i] = np.ravel(obs)
        else:  # an environment bug; there is no earlier observation of this episode to send
            log.warning("episode %d: the environment reset to a non-finite observation: sending zeros",
                        self.running[i].index)
            self.obs[i] = 0.0

    def _env_work(self, lo: int, hi: int) -> None:
        """Resets and steps of slots lo..hi-1; each writes only its own rows."""
        work = self._work
        for i in range(lo, hi):
            if work[i] == _WORK_STEP:
                obs, reward, terminated, truncated, _ = self.envs[i].step(self.actions[i])
                if abs(reward) <= _F32_MAX and _fits_float32(obs):  # (False for NaN too)
                    self.obs[i] = obs if obs.ndim == 1 else np.ravel(obs)
                    self.rewards[i] = reward
                    self.flags[i] = (_TERMINATED if terminated else 0) | (_TRUNCATED if truncated else 0)
                else:  # never sent: the episode ends here, on its last finite observation
                    self.rewards[i] = 0.0
                    self.flags[i] = _TRUNCATED
                    self._cut[i] = True
            elif work[i] == _WORK_RESET:
                self._reset_env(i)

    def _account_step(self, i: int) -> None:
        run = self.running[i]
        if self._cut[i]:
            self._count_nonfinite(i, run)
        run.length += 1
        run.ep_return += self.rewards.item(i)
        self.steps += 1
        self.slot_step[i] = run.length
        if self.flags.item(i) & ENDED:
            self._end_episode(i, run)

    def _count_nonfinite(self, slot: int, run: _Running) -> None:
        self.nonfinite_steps += 1
        if self.nonfinite_steps == 1:
            log.warning(
                "episode %d, step %d: the environment returned a non-finite observation or reward "
                "(or one beyond float32); the episode ends there as truncated, on its last finite "
                "observation, and is reset. Further ones are only counted",
                run.index, run.length + 1,
            )

    def _end_episode(self, slot: int, run: _Running) -> None:
        self.running[slot] = None
        flags = int(self.flags[slot])
        cut, self._cut[slot] = self._cut[slot], False
        stats = EpisodeStats(
            run.index, run.ep_return, run.length, bool(flags & _TERMINATED), bool(flags & _TRUNCATED), slot, run.seed,
            run.clamped, cut,
        )
        self.episodes.append(stats)
        where = f" (slot {slot})" if self.num_envs > 1 else ""
        log.info("episode %d%s: return %.2f over %d steps", run.index, where, run.ep_return, run.length)
        if self.on_episode is not None:
            self.on_episode(stats)


def _fits_float32(values) -> bool:
    """Every value finite and within float32 (NaN compares False)."""
    return bool(np.abs(values).max() <= _F32_MAX)


# ---- results: what both drivers report the same way ------------------------------------------


def finish(result, results_path: str | Path | None):
    """Log why the run stopped and write the result's JSON; returns the result."""
    (log.error if result.stop_reason in FAILED_STOPS else log.info)("sim server stopped: %s", result.detail)
    if results_path is not None:
        Path(results_path).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result


def limits_line(result) -> list[str]:
    """The summary's line on the robot's limits (none when nothing was clamped or cut)."""
    if not (result.clamped_actions or result.nonfinite_steps):
        return []
    return [
        f"limits: {result.clamped_actions} action(s) outside the announced bounds clamped; "
        f"{result.nonfinite_steps} non-finite step(s) cut (episode truncated)"
    ]


def episodes_line(returns: list[float], aborted: int) -> list[str]:
    """The summary's episodes line (none without a completed episode)."""
    if not returns:
        return []
    rets = np.array(returns)
    tail = f", {aborted} aborted" if aborted else ""
    return [f"episodes: {len(rets)}, return mean {rets.mean():.2f} (min {rets.min():.2f}, max {rets.max():.2f}){tail}"]
