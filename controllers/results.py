"""What a controller run returns, and its end-of-run report: lockstep and real-time.

Board-side module: standard library and numpy only, Python 3.10.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from policyrt.spec import Spec
from policyrt.timing import StageTimes, format_table


@dataclass(frozen=True)
class EpisodeSummary:
    index: int  # the robot's episode counter
    episode_return: float  # sum of the rewards the robot reported
    length: int  # OBS answered in the episode (its terminal OBS not counted: no step follows it)
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
    fallbacks: int  # live rows sent the fallback action instead of the policy's
    nonfinite_actions: int  # live policy outputs with NaN/inf (each replaced by the fallback)
    timing: dict[str, dict[str, float]]  # stage -> p50/p99/max in microseconds
    spec: Spec | None = field(default=None, repr=False)
    num_envs: int = 1  # environments behind the robot's endpoint (= the session's batch size)
    env_steps: int = 0  # live observations answered (terminal and idle rows are no env step)
    stage_times: StageTimes | None = field(default=None, repr=False, compare=False)  # raw, for reports
    obs_range_fallbacks: int = 0  # live rows whose observation left the bundle's range (guard on)
    state_resets: int = 0  # slots whose policy state was reset after a non-finite raw action

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
            "obs_range_fallbacks": self.obs_range_fallbacks,
            "state_resets": self.state_resets,
            "timing": self.timing,
        }


@dataclass(frozen=True)
class RealtimeResult:
    stop_reason: str  # "stopped" (request_stop) | "duration" | "interrupted"
    detail: str
    ticks: int
    duration_s: float
    counters: dict
    timing: dict[str, dict[str, float]]  # stage -> n/p50/p99/max/mean in microseconds
    jitter: dict[str, float]  # tick-start jitter n/p50/p99/max in microseconds
    stage_times: StageTimes | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {
            "stop_reason": self.stop_reason,
            "detail": self.detail,
            "ticks": self.ticks,
            "duration_s": self.duration_s,
            "counters": self.counters,
            "timing": self.timing,
            "jitter": self.jitter,
        }


def format_summary(result: LockstepResult) -> str:
    """Human-readable end-of-run report: why it stopped, episodes, errors, stage latencies."""
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


def format_result(result: RealtimeResult) -> str:
    """End-of-run report: why it stopped, deadline misses, fallbacks, rejected frames, latencies."""
    c = result.counters
    ticks = max(1, result.ticks)
    lines = [
        f"stopped: {result.stop_reason} ({result.detail}); {result.ticks} ticks in {result.duration_s:g} s",
        f"deadline misses: {c['deadline_misses']} ({100.0 * c['deadline_misses'] / ticks:.2f}%), "
        f"skipped ticks: {c['skipped_ticks']}",
        "fallbacks: "
        + (", ".join(f"{k}={v}" for k, v in c["fallbacks"].items() if v) or "none")
        + f"; rate-limited: {c['rate_limited']}; e-stops: {c['estops']}; state resets: {c['state_resets']}",
        "rejected frames: " + (", ".join(f"{k}={v}" for k, v in sorted(c["rejected"].items())) or "none"),
    ]
    j = result.jitter
    if j:
        lines.append(
            f"tick-start jitter: p50 {j['p50_us']:.1f} us, p99 {j['p99_us']:.1f} us, max {j['max_us']:.1f} us"
        )
    lines.append(format_table(result.timing))
    return "\n".join(lines)
