"""Closed-loop evaluation: a bundle against P simulated environments, over the wire protocol.

One `policyrt sim serve --num-envs P` process and one `policyrt run` process (one session of batch
P) play N episodes over ipc, exactly as a robot and its controller would; this module checks the
inputs before anything starts, runs that pair (twice with a comparison), accounts for every
episode, rolls the scripted expert on the same seeds and assembles the report's numbers.
`sim/eval_report.py` writes them out.

Seeding: the server runs `--seeding episode`, so episode k resets with `episode_seed(seed, k)` for
any P and either candidate: two evaluations with the same seed play the same N episodes, and the
expert replays exactly those.

Stopping: every phase watches a StopRequest (default: the process's STOP). A stop ends the closed
loop's two processes (sim/processes.py) or the expert's episodes and raises
`processes.Interrupted`; nothing is reported.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policyrt.stopping import STOP, StopRequest

from .processes import Interrupted, closed_loop
from .robot import episode_seed

Progress = Callable[[str, int, int], None]  # (label, episodes done, episodes asked)


class EvalError(ValueError):
    """An input the evaluation cannot use; the message names it and what would work."""


@dataclass(frozen=True)
class EvalConfig:
    env_id: str
    episodes: int
    parallel: int = 1
    seed: int = 0
    max_episode_steps: int | None = None  # None: the environment's own time limit
    timeout_s: float = 6 * 3600.0  # of one closed-loop run: a guard against hangs, not a budget
    env_threads: int | None = None  # the server's stepping threads (None: 2 from 4 environments up)
    controller_threads: int = 1  # the controller's ONNX Runtime intra-op threads

    def seeds(self) -> list[int]:
        return [episode_seed(self.seed, k) for k in range(self.episodes)]

    def env_args(self) -> list[str]:
        return [] if self.max_episode_steps is None else [f"max_episode_steps={self.max_episode_steps}"]


@dataclass(frozen=True)
class Candidate:
    """What gets evaluated: a bundle on a backend, commanding a return (None: the bundle's own)."""

    bundle: str
    backend: str = "auto"
    target_return: float | None = None

    @property
    def backend_name(self) -> str:
        from policyrt.runtime import ALIASES

        name = ALIASES.get(self.backend, self.backend)
        return "onnxruntime" if name == "auto" else name

    @property
    def label(self) -> str:
        target = "" if self.target_return is None else f" target {self.target_return:g}"
        return f"{Path(self.bundle).name} [{self.backend_name}]{target}"


# --- inputs -----------------------------------------------------------------------------------


def check_inputs(cfg: EvalConfig, candidates: list[Candidate]) -> tuple[int, int]:
    """Refuse what cannot run before any process starts; returns the environment's (obs_dim, act_dim)."""
    if cfg.episodes < 1:
        raise EvalError(f"--episodes must be >= 1, got {cfg.episodes}")
    if cfg.parallel < 1:
        raise EvalError(f"--parallel must be >= 1, got {cfg.parallel}")
    if cfg.max_episode_steps is not None and cfg.max_episode_steps < 1:
        raise EvalError(f"--max-episode-steps must be >= 1, got {cfg.max_episode_steps}")
    dims = env_dims(cfg.env_id)
    for cand in candidates:
        check_bundle(cand, cfg.env_id, dims)
    return dims


def env_dims(env_id: str) -> tuple[int, int]:
    import gymnasium
    from gymnasium.error import Error as GymError

    try:
        gymnasium.spec(env_id)
    except GymError as err:
        mujoco = sorted(k for k, s in gymnasium.registry.items() if "mujoco" in str(s.entry_point) and k.endswith("-v5"))
        raise EvalError(f"unknown environment {env_id!r} ({err}); MuJoCo environments: {', '.join(mujoco)}") from None
    env = gymnasium.make(env_id)
    try:
        return int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))
    finally:
        env.close()


def check_bundle(cand: Candidate, env_id: str, dims: tuple[int, int]) -> None:
    from policyrt.bundle import BundleError, open_bundle
    from policyrt.runtime import BACKENDS

    try:
        manifest = open_bundle(cand.bundle).manifest
    except BundleError as err:
        raise EvalError(f"bundle {cand.bundle}: {err}") from None
    if cand.backend_name not in BACKENDS:
        raise EvalError(f"unknown backend {cand.backend!r}; available: auto, {', '.join(BACKENDS)}")
    if (manifest.obs_dim, manifest.act_dim) != dims:
        trained = f" (it was trained on {manifest.env_id})" if manifest.env_id else ""
        raise EvalError(
            f"bundle {manifest.name} expects obs_dim={manifest.obs_dim}, act_dim={manifest.act_dim}, but {env_id} "
            f"has obs_dim={dims[0]}, act_dim={dims[1]}{trained}"
        )


# --- one closed-loop run ----------------------------------------------------------------------


def run_candidate(cfg: EvalConfig, cand: Candidate, progress: Progress | None = None,
                  stop: StopRequest = STOP) -> dict:
    """Evaluate one candidate in a server + controller process pair; returns its report entry
    (with `_stage_ns`, the raw stage durations for plots, which the JSON report leaves out)."""
    events: list[dict] = []  # the server's episode events, as the episodes ended

    def on_episode(event: dict) -> None:
        events.append(event)
        if progress is not None:
            progress(cand.label, len(events), cfg.episodes)

    if progress is not None:
        progress(cand.label, 0, cfg.episodes)
    with tempfile.TemporaryDirectory(prefix="policyrt-eval-") as tmp:
        started = time.monotonic()
        server, controller = closed_loop(
            cand.bundle, cfg.env_id, cfg.episodes, seed=cfg.seed, backend=cand.backend, timeout_s=cfg.timeout_s,
            num_envs=cfg.parallel, seeding="episode", env_args=cfg.env_args(), stage_times_dir=Path(tmp),
            on_episode=on_episode, target_return=cand.target_return, threads=cfg.controller_threads,
            env_threads=cfg.env_threads, stop=stop,
        )
        wall_s = time.monotonic() - started
        stage_ns = {"controller": _load_stage_times(Path(tmp) / "controller_times.npz"),
                    "robot": _load_stage_times(Path(tmp) / "server_times.npz")}
    episodes = account_episodes(cfg, events, server, controller)
    returns = np.array([e["return"] for e in episodes])
    lengths = np.array([e["length"] for e in episodes])
    return {
        "label": cand.label,
        "bundle": str(cand.bundle),
        "backend": cand.backend_name,
        "target_return": cand.target_return,
        "episodes": episodes,
        "return": _stats(returns),
        "length": _stats(lengths),
        "env_steps": server["steps"],
        "ticks": controller["ticks"],
        "session_s": server["session_s"],
        "steps_per_s": server["steps"] / server["session_s"] if server["session_s"] else None,
        "wall_s": round(wall_s, 3),  # process start-up and session loading included
        "latency_us": {side: _latency(times) for side, times in stage_ns.items()},
        "errors": {"controller": controller["errors"], "robot": server["errors"]},
        "fallbacks": controller["fallbacks"],
        "nonfinite_actions": controller["nonfinite_actions"],
        "_stage_ns": stage_ns,
    }


def account_episodes(cfg: EvalConfig, events: list[dict], server: dict, controller: dict) -> list[dict]:
    """Every episode exactly once, in index order, seen the same way by both processes: the server's
    episode events (sim/episode_events.py) as the episodes ended, its results at the end, and the
    controller's results."""
    seen = sorted(e["index"] for e in events)
    if seen != list(range(cfg.episodes)):
        raise RuntimeError(f"episode accounting: the server's events name episodes {seen}, expected 0..{cfg.episodes - 1}")
    if [{k: v for k, v in e.items() if k != "event"} for e in events] != server["episodes"]:
        raise RuntimeError("episode accounting: the server's episode events differ from its results")
    if server["aborted_episodes"]:
        raise RuntimeError(f"episode accounting: {server['aborted_episodes']} episode(s) were aborted")
    by_index = {e["index"]: e for e in controller["episodes"]}
    if sorted(by_index) != seen or len(controller["episodes"]) != cfg.episodes:
        raise RuntimeError(
            f"episode accounting: the controller counted episodes {sorted(e['index'] for e in controller['episodes'])}, "
            f"the server {seen}"
        )
    seeds = cfg.seeds()
    rows = []
    for e in sorted(events, key=lambda e: e["index"]):
        mine = by_index[e["index"]]
        # The controller sums the float32 rewards it received; the server the float64 ones.
        if mine["length"] != e["length"] or not math.isclose(
            mine["episode_return"], e["episode_return"], rel_tol=1e-4, abs_tol=1e-3
        ):
            raise RuntimeError(f"episode accounting: episode {e['index']} differs: server {e}, controller {mine}")
        if e["seed"] != seeds[e["index"]]:
            raise RuntimeError(f"episode {e['index']} was reset with seed {e['seed']}, not episode_seed(seed, k)")
        rows.append({"index": e["index"], "seed": e["seed"], "slot": e["slot"], "return": e["episode_return"],
                     "length": e["length"], "terminated": e["terminated"], "truncated": e["truncated"]})
    return rows


def _load_stage_times(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {str(name): data["ns"][:, i].copy() for i, name in enumerate(data["stages"])}


def _latency(times: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    out = {}
    for stage, ns in times.items():
        if not len(ns):
            continue
        us = ns / 1e3
        p50, p90, p99 = np.percentile(us, [50, 90, 99])
        out[stage] = {"n": int(len(us)), "p50": round(float(p50), 1), "p90": round(float(p90), 1),
                      "p99": round(float(p99), 1), "max": round(float(us.max()), 1), "mean": round(float(us.mean()), 1)}
    return out


def _stats(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
            "max": float(values.max())}


# --- references and comparisons ---------------------------------------------------------------


def expert_reference(cfg: EvalConfig, stop: StopRequest = STOP) -> dict:
    """The scripted expert (sim/experts.py) on the evaluation's seeds, in this process (a stop
    request is seen between two episodes: an episode takes well under a second)."""
    import gymnasium

    from .collect import run_episode
    from .experts import SUPPORTED, make_expert

    name = next((n for n, envs in SUPPORTED.items() if cfg.env_id in envs), None)
    if name is None:
        listed = "; ".join(f"{n}: {', '.join(envs)}" for n, envs in SUPPORTED.items())
        return {"available": False, "reason": f"no scripted expert for {cfg.env_id} (experts: {listed})"}
    kwargs = {} if cfg.max_episode_steps is None else {"max_episode_steps": cfg.max_episode_steps}
    env = gymnasium.make(cfg.env_id, **kwargs)
    try:
        expert = make_expert(name, env)
        rng = np.random.default_rng(0)  # unused at noise 0, which run_episode still asks for
        played = []
        for seed in cfg.seeds():
            _check(stop)
            played.append(run_episode(env, expert, rng, 0.0, seed))
    finally:
        env.close()
    returns = np.array([ep.total_return for ep in played])
    return {"available": True, "expert": name, "returns": returns.tolist(), "lengths": [len(ep) for ep in played],
            "return": _stats(returns)}


def compare_runs(a: dict, b: dict) -> dict:
    """Per-episode return difference b - a on the same seeds."""
    diff = np.array([eb["return"] - ea["return"] for ea, eb in zip(a["episodes"], b["episodes"])])
    return {
        "a": a["label"],
        "b": b["label"],
        "return_diff": diff.tolist(),
        "mean_return_diff": float(b["return"]["mean"] - a["return"]["mean"]),
        "max_abs_return_diff": float(np.abs(diff).max()),
        "same_lengths": sum(ea["length"] == eb["length"] for ea, eb in zip(a["episodes"], b["episodes"])),
    }


def evaluate(cfg: EvalConfig, candidate: Candidate, compare: Candidate | None = None,
             progress: Progress | None = None, stop: StopRequest = STOP) -> dict:
    """The whole evaluation: inputs checked, candidate(s) run, expert rolled; the report as a dict.
    Raises Interrupted on a stop request (see the module docstring)."""
    candidates = [candidate] + ([compare] if compare is not None else [])
    obs_dim, act_dim = check_inputs(cfg, candidates)
    _check(stop)
    runs = [run_candidate(cfg, cand, progress, stop) for cand in candidates]
    expert = expert_reference(cfg, stop)
    report = {
        "env": cfg.env_id,
        "obs_dim": obs_dim,
        "act_dim": act_dim,
        "episodes": cfg.episodes,
        "parallel": cfg.parallel,
        "seed": cfg.seed,
        "seeding": "episode k resets with episode_seed(seed, k) = SeedSequence([seed, k]).generate_state(1)[0]",
        "seeds": cfg.seeds(),
        "max_episode_steps": cfg.max_episode_steps,
        "runs": runs,
        "expert": expert,
        "compare": compare_runs(runs[0], runs[1]) if compare is not None else None,
    }
    if expert["available"] and expert["return"]["mean"]:
        for run in runs:
            run["return_vs_expert"] = run["return"]["mean"] / expert["return"]["mean"]
    return report


def _check(stop: StopRequest) -> None:
    if stop.requested:
        raise Interrupted(stop.reason)
