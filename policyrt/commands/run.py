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
    p.add_argument("bundle", help="bundle directory (NAME.policy/) or .tar")
    p.add_argument(
        "--connect",
        required=True,
        action="append",
        metavar="ENDPOINT",
        help="the robot's endpoint: tcp://HOST:PORT or ipc://PATH (realtime: repeat for several robots)",
    )
    p.add_argument(
        "--mode",
        choices=["lockstep", "realtime"],
        default="lockstep",
        help="lockstep: answer each observation (simulation); realtime: fixed-rate loop (robots) "
        "(default: lockstep)",
    )
    p.add_argument(
        "--backend", default="auto",
        help="auto (ONNX Runtime), onnxruntime, torch, torch-cuda or tensorrt (an engine verified on this board) "
        "(default: auto)"
    )
    p.add_argument(
        "--episodes", type=int, default=None, help="stop after N episodes (default: until the robot leaves)"
    )
    p.add_argument(
        "--spin-us",
        type=int,
        default=0,
        metavar="US",
        help="lockstep: busy-poll each observation this long before blocking; realtime: busy-wait this "
        "long before each tick instead of sleeping (default 200; a longer spin keeps caches warm at a CPU's cost)",
    )
    p.add_argument(
        "--robot-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="give up on a silent robot after S seconds",
    )
    p.add_argument("--target-return", type=float, metavar="R",
                   help="return to command at every reset (default: the bundle's target_return); a lower "
                   "one asks a return-conditioned policy for a worse episode")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="ONNX Runtime intra-op threads (default 1: latency first; 2 pays off for a batched "
                   "session in lockstep, where the sim server waits while the controller infers)")
    p.add_argument("--results", metavar="PATH", help="write the summary (episodes, errors, timing) as JSON")
    p.add_argument(
        "--stage-times", metavar="PATH", help="write the raw per-tick stage durations (.npz, nanoseconds)"
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow a robot or telemetry endpoint off this machine without CURVE keys (docs/DAEMON.md, Keys)",
    )
    from policyrt.commands._realtime_args import add_realtime_arguments

    add_realtime_arguments(p)
    p.set_defaults(handler=handle)
    return p


def _load(args: argparse.Namespace, batch_size: int):
    """The session of the bundle, commanding --target-return when given (it stays across resets)."""
    from policyrt.runtime import load

    options = {"intra_op_threads": args.threads} if args.threads != 1 else {}
    if options and args.backend not in ("auto", "onnxruntime"):
        raise ValueError(f"--threads applies to ONNX Runtime only, not to backend {args.backend!r}")
    session = load(args.bundle, backend=args.backend, batch_size=batch_size, **options)
    if args.target_return is not None:
        session.set_target_return(args.target_return)
    return session


def _refused_endpoint(args: argparse.Namespace) -> str | None:
    """The loopback policy: endpoints off this machine need CURVE keys (realtime) or --insecure."""
    from policyrt.controllers.auth import AuthError, check_endpoint

    try:
        for endpoint in args.connect:
            check_endpoint(endpoint, secured=bool(args.curve_keys), insecure=args.insecure, what="--connect",
                           how="--mode realtime --curve-keys DIR")
        if args.telemetry:
            check_endpoint(args.telemetry, secured=False, insecure=args.insecure, what="--telemetry",
                           how=None)
    except AuthError as exc:
        return str(exc)
    return None


def handle(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    from policyrt.commands._realtime_args import realtime_misuse

    misuse = realtime_misuse(args)
    if misuse:
        print(f"policyrt run: {misuse}", file=sys.stderr)
        return 2
    refused = _refused_endpoint(args)
    if refused:
        print(f"policyrt run: {refused}", file=sys.stderr)
        return 2
    if args.mode == "realtime":
        from policyrt.commands._realtime_run import run_realtime

        return run_realtime(args, load_session=lambda batch: _load(args, batch_size=batch))
    from policyrt.controllers.loop import SpecMismatchError, format_summary, run_lockstep
    from policyrt.runtime import BundleError

    # Loaded before connecting, so a broken bundle or backend fails before the robot waits; a
    # robot with several environments gets a session of its batch size instead (imports warm).
    try:
        session = _load(args, batch_size=1)
    except (BundleError, ImportError, RuntimeError, ValueError) as exc:
        # A refused bundle, a missing backend library, an unverified TensorRT engine, an unknown
        # backend: one line that says what to do, not a traceback.
        print(f"policyrt run: {exc}", file=sys.stderr)
        return 2
    try:
        result = run_lockstep(
            session,
            args.connect[0],
            episodes=args.episodes,
            spin_us=args.spin_us,
            robot_timeout_s=args.robot_timeout,
            make_session=lambda batch: _load(args, batch_size=batch),
        )
    except (SpecMismatchError, TimeoutError) as exc:
        print(f"policyrt run: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, SpecMismatchError) else 1
    except KeyboardInterrupt:  # Ctrl-C before the session started
        print("policyrt run: interrupted before the session started", file=sys.stderr)
        return 130
    print(format_summary(result), flush=True)
    if args.results:
        with open(args.results, "w") as f:
            json.dump(result.to_dict(), f, indent=2)
    if args.stage_times and result.stage_times is not None:
        result.stage_times.save(args.stage_times)
    return 1 if result.stop_reason in _FAILED else 0
