"""`policyrt verify`: replay parity.json on a backend; non-zero exit past tolerance."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "verify",
        help="check a backend against the bundle's recorded reference rollout",
        description="Replay the bundle's parity.json (recorded inputs, resets included) on a backend and "
        "compare every action and the final state with the PyTorch reference. Exits 1 past tolerance: "
        "run it on the target machine before the robot is allowed to move.",
        epilog="example:\n  policyrt verify bundles/inverted-pendulum-xlstm.policy --backend onnxruntime",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bundle", help="bundle directory or .tar")
    p.add_argument("--backend", default="onnxruntime", help="onnxruntime (default) or torch")
    p.add_argument("--tolerance", type=float, help="max abs error (default: the one recorded in parity.json)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=handle)
    return p


def handle(args) -> int:
    from policyrt.bundle import BundleError, open_bundle
    from policyrt.runtime.verify import verify_backend

    try:
        report = verify_backend(open_bundle(args.bundle), args.backend, args.tolerance)
    except (BundleError, ImportError, ValueError) as err:
        print(f"verify failed: {err}", file=sys.stderr)
        return 1
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())
    return 0 if report.ok else 1
