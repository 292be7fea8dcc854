"""`policyrt demo`: shipped bundles controlling a MuJoCo robot in closed loop, two processes over ipc."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
# Both policy kinds on the double pendulum when those bundles are there; the pendulum's otherwise.
PREFERRED = (("double-pendulum-xlstm.policy", "double-pendulum-dt.policy"), ("inverted-pendulum-xlstm.policy",))


def default_bundles() -> list[str]:
    for group in PREFERRED:
        if all((BUNDLES / name).exists() for name in group):
            return [str(BUNDLES / name) for name in group]
    return [str(BUNDLES / PREFERRED[-1][0])]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo",
        help="closed-loop demo: sim server + controller processes on the shipped bundles",
        description="For each bundle, start a MuJoCo sim server process and a controller process (ONNX "
        "Runtime on CPU, ipc transport), play episodes, and print each episode's return beside the scripted "
        "expert's on the same seeds and the latency of every stage; the evaluation report (report.md, "
        "report.json, return and latency plots) goes to --report. Default: the xLSTM and the DT bundle on "
        "the double pendulum. --video renders one more episode offscreen (MUJOCO_GL=egl). SIGINT or SIGTERM "
        "stops the processes of the bundle being run (each says BYE) and ends the demo with exit 0.",
        epilog="examples:\n  policyrt demo\n  policyrt demo --episodes 10 --video demo.mp4\n"
        "  policyrt demo --bundle bundles/reacher-dt.policy --report reports/reacher",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bundle", action="append", help="bundle to run (repeat for several; default: see above)")
    p.add_argument("--episodes", type=int, default=5, help="episodes per bundle (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the evaluation (default 0)")
    p.add_argument("--report", default="reports/demo", metavar="DIR",
                   help="where the reports go, one folder per bundle (default reports/demo)")
    p.add_argument("--video", metavar="FILE",
                   help="also render one episode per bundle to FILE (.mp4 or .gif; with several bundles the "
                   "bundle's name is appended to the file name)")
    from policyrt.commands._session_args import add_session_arguments

    add_session_arguments(p, applies_to="the controller processes")
    p.set_defaults(handler=handle)
    return p


def run_one(bundle: str, args) -> bool:
    from policyrt.bundle import open_bundle
    from policyrt.commands._session_args import session_from_args
    from policyrt.sim.eval_report import write_report
    from policyrt.sim.evaluate import Candidate, EvalConfig, evaluate
    from policyrt.sim.experts import close_to_expert

    session = session_from_args(args)
    manifest = open_bundle(bundle).manifest
    env_id = manifest.env_id or "InvertedPendulum-v5"
    print(f"\n=== {manifest.name} ({manifest.kind}) on {env_id}, {args.episodes} episodes, backend {session.backend}, ipc",
          flush=True)
    report = evaluate(EvalConfig(env_id=env_id, episodes=args.episodes, seed=args.seed,
                                 controller_threads=session.threads),
                      Candidate(bundle, session.backend, session.target_return))
    run, expert = report["runs"][0], report["expert"]
    print(f"{'episode':>7}  {'policy':>9}  {'expert':>9}  steps")
    for k, ep in enumerate(run["episodes"]):
        print(f"{k:>7}  {ep['return']:>9.2f}  {expert['returns'][k]:>9.2f}  {ep['length']}")
    print(f"{'side':<10}  {'stage':<8}  {'p50 us':>8}  {'p99 us':>8}")
    for side, stages in run["latency_us"].items():
        for name, s in stages.items():
            print(f"{side:<10}  {name:<8}  {s['p50']:>8.1f}  {s['p99']:>8.1f}")
    ok = close_to_expert(run["return"]["mean"], expert["return"]["mean"])
    print(f"result: mean return {run['return']['mean']:.2f} vs the expert's {expert['return']['mean']:.2f}: "
          + ("the policy matches the expert" if ok else "the policy falls short of the expert"))
    folder = Path(args.report) / manifest.name
    paths = write_report(report, folder)
    print(f"report: {folder}/ ({', '.join(p.name for p in paths)})")
    if args.video:
        _video(bundle, env_id, session.backend, args)
    return ok


def _video(bundle: str, env_id: str, backend: str, args) -> None:
    from policyrt.sim.video import render_episode

    out = Path(args.video)
    if len(args.bundle or default_bundles()) > 1:
        out = out.with_name(f"{out.stem}-{Path(bundle).name.removesuffix('.policy')}{out.suffix}")
    result = render_episode(bundle, env_id, out, seed=args.seed, backend=backend)
    print(f"video: {result.path} ({result.frames} frames, return {result.episode_return:.2f})")


def handle(args) -> int:
    from policyrt.sim.processes import Interrupted
    from policyrt.stopping import STOP

    if args.video and Path(args.video).suffix.lower() not in (".mp4", ".gif"):
        print(f"policyrt demo: --video {args.video}: the file name must end in .mp4 or .gif", file=sys.stderr)
        return 2
    from policyrt.commands._session_args import session_from_args, untrusted

    if refused := untrusted(session_from_args(args), args.bundle or default_bundles()):
        print(f"policyrt demo: {refused}", file=sys.stderr)
        return 2
    results = []
    try:
        for bundle in args.bundle or default_bundles():
            results.append(run_one(bundle, args))
            if STOP.requested:  # it came during the --video render, which runs to its end
                raise Interrupted(STOP.reason)
    except Interrupted as stopped:  # the closed loop's processes were stopped and reaped
        print(f"policyrt demo: {stopped}; no process left running", file=sys.stderr)
        return 0
    return 0 if all(results) else 1
