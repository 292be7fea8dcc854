"""`policyrt run`: control a robot (or the sim server) with a bundle over the wire protocol."""

from __future__ import annotations

import argparse
import json
import logging
import sys

DESCRIPTION = """\
Load a policy bundle and act as the controller of the robot bound at ENDPOINT: say HELLO, check
the robot's SPEC against the bundle, then answer every observation with the policy's action,
clipped to the action bounds. Prints episode returns and per-stage latencies (receive, infer,
filter, send) at the end, including after Ctrl-C. A robot that announces several environments
(e.g. `policyrt sim serve --num-envs 16`) gets one session of that batch size, each slot
resetting on its own.

--mode realtime runs a fixed-rate loop instead (--rate HZ, default the bundle's recommended rate):
each tick takes the newest observation, steps the policy and sends an action through the safety
chain (non-finite guard, clip, --max-delta rate limit, --fallback on a stale observation, a missed
deadline, a non-finite action or a latched e-stop). It never waits for the robot. Give --connect
once per robot to drive several robots with one batched session. It runs until --duration, Ctrl-C
or SIGTERM, and then sends every robot the safe action and BYE. SIGUSR1 dumps the flight recorder
(with --record-dir). The robot side must speak the real-time protocol, e.g. `policyrt sim serve
--mode realtime`."""

EXAMPLES = """\
examples:
  policyrt run bundles/inverted-pendulum-xlstm.policy --connect tcp://127.0.0.1:5555
  policyrt run bundles/inverted-pendulum-xlstm.policy --connect ipc:///tmp/pend.sock --episodes 5
  policyrt run my.policy --connect tcp://127.0.0.1:5555 --backend onnxruntime --spin-us 200 --results run.json
  policyrt run bundles/inverted-pendulum-xlstm.policy --connect ipc:///tmp/pend.sock --mode realtime --rate 500 \
      --fallback zero --max-delta 0.5 --duration 60 --telemetry tcp://127.0.0.1:6000 --record-dir /tmp/flight
  policyrt run my.policy --connect tcp://127.0.0.1:5555 --connect tcp://127.0.0.1:5565 --mode realtime \
      --sched-fifo 80 --cpu 1 --lock-memory

the robot side must be bound first or soon after, e.g.:
  policyrt sim serve --env InvertedPendulum-v5 --bind tcp://127.0.0.1:5555
  policyrt sim serve --env InvertedPendulum-v5 --bind ipc:///tmp/pend.sock --mode realtime --rate 500"""

# Stop reasons that mean the run did not end the way it was asked to.
_FAILED = ("robot_lost",)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "run",
        help="run a bundle as the controller of a robot or simulation",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from policyrt.commands._realtime_args import add_general_arguments, add_realtime_arguments
    from policyrt.commands._session_args import add_session_arguments

    add_general_arguments(p)
    p.add_argument(
        "--mode",
        choices=["lockstep", "realtime"],
        default="lockstep",
        help="lockstep: answer each observation (simulation); realtime: fixed-rate loop (robots) "
        "(default: lockstep)",
    )
    p.add_argument(
        "--episodes", type=int, default=None, help="stop after N episodes (default: until the robot leaves)"
    )
    p.add_argument(
        "--robot-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="give up on a silent robot after S seconds",
    )
    p.add_argument("--results", metavar="PATH", help="write the summary (episodes, errors, timing) as JSON")
    p.add_argument(
        "--stage-times", metavar="PATH", help="write the raw per-tick stage durations (.npz, nanoseconds)"
    )
    add_session_arguments(p)
    add_realtime_arguments(p)
    p.set_defaults(handler=handle)
    return p


def handle(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    from policyrt.commands._realtime_args import realtime_misuse, settings_from_args
    from policyrt.controllers.build import check_endpoints

    misuse = realtime_misuse(args)
    if not misuse:
        try:
            settings = settings_from_args(args)
            if args.mode == "lockstep":  # (realtime checks them when it builds the controller)
                check_endpoints(settings)  # the loopback policy: off this machine needs --insecure
        except ValueError as exc:  # a bad --connect list, a refused endpoint (AuthError)
            misuse = str(exc)
    if misuse:
        print(f"policyrt run: {misuse}", file=sys.stderr)
        return 2
    from policyrt.session_control import release_global_context

    try:
        return _run(args, settings)
    finally:
        release_global_context()  # the final BYE leaves before the process exits


def _run(args: argparse.Namespace, settings) -> int:
    if args.mode == "realtime":
        from policyrt.commands._realtime_run import run_realtime

        return run_realtime(args, settings)
    from policyrt.controllers.core import InferenceFailed, SpecMismatchError
    from policyrt.controllers.lockstep import run_lockstep
    from policyrt.controllers.results import format_summary
    from policyrt.runtime import BundleError

    # Loaded before connecting, so a broken bundle or backend fails before the robot waits; a
    # robot with several environments gets a session of its batch size instead (imports warm).
    try:
        session = settings.session.load(settings.bundle, batch_size=1)
    except (BundleError, ImportError, RuntimeError, ValueError) as exc:
        # A refused bundle, a missing backend library, an unverified TensorRT engine, an unknown
        # backend: one line that says what to do, not a traceback.
        print(f"policyrt run: {exc}", file=sys.stderr)
        return 2
    from policyrt.stopping import STOP

    if STOP.requested:  # a signal while the bundle loaded: no session has started, nobody to tell
        print(f"policyrt run: stopped by {STOP.reason} before the session started", file=sys.stderr)
        return 0
    try:
        result = run_lockstep(
            session,
            args.connect[0],
            episodes=args.episodes,
            spin_us=args.spin_us or 0,  # lockstep's default: block at once
            robot_timeout_s=args.robot_timeout,
            make_session=lambda batch: settings.session.load(settings.bundle, batch_size=batch),
            obs_range_factor=settings.loop.obs_range_factor,
        )
    except InferenceFailed as exc:  # the robot got the safe action and BYE
        print(f"policyrt run: {exc}; the robot got the safe action and BYE", file=sys.stderr)
        return 1
    except (SpecMismatchError, BundleError, TimeoutError) as exc:  # BundleError: the robot's batch size
        print(f"policyrt run: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, TimeoutError) else 2
    print(format_summary(result), flush=True)
    if args.results:
        with open(args.results, "w") as f:
            json.dump(result.to_dict(), f, indent=2)
    if args.stage_times and result.stage_times is not None:
        result.stage_times.save(args.stage_times)
    return 1 if result.stop_reason in _FAILED else 0
