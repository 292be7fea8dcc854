"""`policyrt compare`: the bundle against its original model, with the drift curve over steps."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    from policyrt.policies.kinds import REFERENCES

    p = subparsers.add_parser(
        "compare",
        help="run the original model beside the bundle and show the drift over steps",
        description="Step the bundle (on --backend) and its original model side by side on the same inputs: "
        "random closed-loop inputs with episode resets (prev_action = the bundle's own action), or the "
        "bundle's recorded parity rollout. Prints the per-step action drift by step range; --plot draws it.",
        epilog="examples:\n"
        "  policyrt compare hopper-dt.policy --reference hopper-dt/ --from hf-dt --steps 1000 --plot drift.png\n"
        "  policyrt compare bundles/inverted-pendulum-xlstm.policy --reference checkpoints/pendulum-xlstm",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bundle", help="bundle directory or .tar")
    p.add_argument("--reference", required=True, metavar="SOURCE", help="the original model (directory or file)")
    p.add_argument("--from", dest="reference_kind", default="checkpoint",
                   choices=list(REFERENCES), help="what SOURCE is")
    p.add_argument("--inputs", choices=["random", "recorded"], default="random", help="input series (default random)")
    p.add_argument("--steps", type=int, default=1000, help="steps of random inputs (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.add_argument("--tolerance", type=float, default=1e-5, help="drift that counts as a failure (default 1e-5)")
    p.add_argument("--plot", metavar="FILE.png", help="write the drift curve as a PNG")
    p.add_argument("--json", metavar="FILE", help="write the summary and the per-step drift as JSON")
    from policyrt.commands._session_args import add_session_arguments

    add_session_arguments(p, applies_to="the bundle's side")
    p.set_defaults(handler=handle)
    return p


def handle(args) -> int:
    from policyrt.bundle import BundleError
    from policyrt.commands._session_args import session_from_args
    from policyrt.export.compare import drift_curve, random_inputs, recorded_inputs
    from policyrt.policies.references import make_reference

    settings = session_from_args(args)
    try:
        session = settings.load(args.bundle)
        manifest = session.manifest
        reference = make_reference(args.reference_kind, args.reference, manifest)
    except (BundleError, FileNotFoundError, ValueError, ImportError) as err:
        print(f"compare failed: {err}", file=sys.stderr)
        return 1
    series = recorded_inputs(session.bundle) if args.inputs == "recorded" else random_inputs(manifest, args.steps, args.seed)
    target = manifest.target_return if settings.target_return is None else settings.target_return
    report = drift_curve(session, reference, *series, target_return=target,
                         source=f"{args.reference_kind} {args.reference}", inputs=args.inputs)
    print(report.table(args.tolerance))
    if args.plot:
        report.plot(args.plot, args.tolerance)
        print(f"wrote {args.plot}")
    if args.json:
        with open(args.json, "w") as handle_:
            json.dump({**report.summary(), "drift": report.drift.tolist()}, handle_)
    return 0 if report.drift.max() <= args.tolerance else 1
