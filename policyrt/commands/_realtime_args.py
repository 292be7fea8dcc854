"""The real-time options of `policyrt run`, kept apart so run.py stays readable."""

from __future__ import annotations

import argparse

# Options that mean nothing in lockstep; given there, they are refused rather than ignored.
_REALTIME_ONLY = {
    "rate": None,
    "fallback": None,
    "max_delta": None,
    "stale_after": None,
    "sched_fifo": None,
    "cpu": None,
    "lock_memory": False,
    "duration": None,
    "telemetry": None,
    "prometheus_port": None,
    "record_dir": None,
    "curve_keys": None,
    "record_episodes": None,
    "episodes_format": "npz",
}


def _cpus(text: str) -> tuple[int, ...]:
    try:
        cpus = tuple(int(c) for c in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CPU numbers like 1 or 0,1; got {text!r}") from None
    if any(c < 0 for c in cpus):
        raise argparse.ArgumentTypeError(f"CPU numbers are >= 0, got {text!r}")
    return cpus


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def add_realtime_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("real-time mode (--mode realtime)")
    g.add_argument(
        "--rate", type=_positive, metavar="HZ", help="control rate (default: the bundle's recommended rate)"
    )
    g.add_argument(
        "--fallback",
        metavar="MODE",
        help="action sent on a fault: hold (repeat the last applied), zero, or comma-separated values "
        "such as 0.0,0.5 (default: hold)",
    )
    g.add_argument(
        "--max-delta",
        metavar="D",
        help="rate limit: largest change per tick, one value or one per action dimension (0.1 or 0.1,0.2)",
    )
    g.add_argument(
        "--stale-after",
        type=_positive,
        metavar="S",
        help="an observation older than S seconds is stale: fallback (default: 3 control periods)",
    )
    g.add_argument(
        "--sched-fifo", type=int, metavar="PRIO", help="run the loop with SCHED_FIFO priority 1..99"
    )
    g.add_argument(
        "--cpu", type=_cpus, metavar="CPUS", help="pin the controller to these CPUs, e.g. 1 or 2,3"
    )
    g.add_argument("--lock-memory", action="store_true", help="mlockall(): no page faults in the loop")
    g.add_argument(
        "--duration", type=_positive, metavar="S", help="stop after S seconds (default: until Ctrl-C)"
    )
    g.add_argument(
        "--telemetry",
        metavar="ENDPOINT",
        help="publish JSON telemetry snapshots on a PUB socket (see `policyrt top`)",
    )
    g.add_argument(
        "--prometheus-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on this port (prometheus-client)",
    )
    g.add_argument(
        "--record-dir",
        metavar="DIR",
        help="flight recorder: dump the last ticks to DIR/flight-*.npz on faults and on SIGUSR1",
    )
    g.add_argument(
        "--record-episodes",
        metavar="DIR",
        help="write every episode (observations, applied and raw actions, rewards) as a dataset to DIR "
        "at the end (`policyrt train --data DIR` reads it)",
    )
    g.add_argument(
        "--episodes-format",
        choices=["npz", "minari"],
        default="npz",
        help="dataset format of --record-episodes: npz (board-side, default) or minari (needs the sim extra)",
    )
    g.add_argument(
        "--curve-keys", metavar="DIR", help="CURVE keys from `policyrt keys generate` (client side)"
    )


def realtime_misuse(args) -> str | None:
    """A message when the options do not fit the mode, else None."""
    if args.mode == "realtime":
        if args.episodes is not None or args.stage_times:
            return "--episodes and --stage-times are lockstep options; use --duration in realtime mode"
        return None
    given = [name for name, default in _REALTIME_ONLY.items() if getattr(args, name) != default]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        return f"{flags} only apply to --mode realtime"
    if len(args.connect) > 1:
        return "lockstep drives one robot endpoint; give --connect once (several robots: --mode realtime)"
    return None
