"""`policyrt bench`: step latency against the baselines, and the closed-loop round-trip overhead."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench",
        help="benchmark step latency (vs the xlstm package's eager step) and the closed loop",
        description="In ONE run: per-step latency p50/p90/p99 at batch 1 of (a) the Session on ONNX Runtime, "
        "(b) the xlstm package's eager xLSTMBlockStack.step with the same weights, (c) the PyTorch "
        "reference backend; ratios against (b). With --loop, also a lockstep closed loop over tcp loopback "
        "between two processes, reporting the round trip beyond inference.",
        epilog="example:\n  policyrt bench bundles/inverted-pendulum-xlstm.policy --loop --json bench.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--steps", type=int, default=5000, help="timed steps per variant (default 5000)")
    p.add_argument("--loop", action="store_true", help="also run the closed-loop round-trip benchmark")
    p.add_argument("--loop-episodes", type=int, default=5, help="episodes of the closed loop (default 5)")
    p.add_argument("--spin-us", type=int, default=5000, help="busy-poll budget of both loop processes (default 5000)")
    p.add_argument("--port", type=int, default=5599, help="tcp loopback port of the closed loop (default 5599)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON ('-' for stdout only)")
    from policyrt.commands._session_args import add_session_arguments

    # (a) is the Session on ONNX Runtime by definition (the comparison with the baselines); what
    # the group chooses is the closed loop's controller.
    add_session_arguments(p, applies_to="the --loop controller")
    p.set_defaults(handler=handle)
    return p


def handle(args) -> int:
    from policyrt.benchmark import format_step_benchmark, loop_overhead, run_step_benchmark

    from ._session_args import session_flags_given, session_from_args, untrusted

    given = session_flags_given(args)
    if not args.loop and given:
        print(f"policyrt bench: {', '.join(given)} only apply with --loop", file=sys.stderr)
        return 2
    session = session_from_args(args)
    if refused := untrusted(session, [args.bundle]):
        print(f"policyrt bench: {refused}", file=sys.stderr)
        return 2
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json == "-" else print
    report = run_step_benchmark(Path(args.bundle), steps=args.steps, progress=log)
    log(format_step_benchmark(report))
    if args.loop:
        from policyrt.bundle import open_bundle
        from policyrt.sim.processes import closed_loop

        env_id = open_bundle(args.bundle).manifest.env_id or "InvertedPendulum-v5"
        for spin in sorted({0, args.spin_us}):
            log(f"closed loop over tcp loopback, spin {spin} us, {args.loop_episodes} episodes ...")
            server, controller = closed_loop(args.bundle, env_id, args.loop_episodes,
                                             endpoint=f"tcp://127.0.0.1:{args.port}", spin_us=spin,
                                             backend=session.backend, threads=session.threads,
                                             target_return=session.target_return)
            over = loop_overhead(server, controller)
            report[f"loop_tcp_spin{spin}"] = {**over, "controller_timing": controller["timing"],
                                             "robot_timing": server["timing"]}
            log(f"  round trip p50 {over['answer_p50_us']:.1f} us, inference p50 {over['infer_p50_us']:.1f} us, "
                f"overhead beyond inference p50 {over['overhead_p50_us']:.1f} us")
    if args.json == "-":
        print(json.dumps(report, indent=2))
    elif args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0
