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
        epilog="examples:\n  policyrt verify bundles/inverted-pendulum-xlstm.policy --backend onnxruntime\n"
        "  policyrt verify bundles/inverted-pendulum-xlstm.policy --backend tensorrt --precision fp16\n"
        "  policyrt verify bundles/inverted-pendulum-xlstm.policy --trust /etc/policyrt/trusted\n\n"
        "--trust DIR checks the bundle's signature first (policyrt sign): exit 1 unless a public key in DIR\n"
        "signed the bundle as it is now.\n"
        "--backend tensorrt replays on this board's engine (policyrt build-engine) with tolerance 1e-4 (fp32)\n"
        "or 5e-3 (fp16), and on a pass writes engines/<engine>.verified.json: the tensorrt backend refuses\n"
        "an engine without a stamp that matches its sha256, this GPU and this TensorRT version.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bundle", help="bundle directory or .tar")
    p.add_argument("--precision", choices=["fp32", "fp16"],
                   help="tensorrt: which engine to verify (default: fp32 if built, else fp16)")
    p.add_argument("--batch", type=int, help="slots of the backend replayed on (default: parity.json's; iree: 1, "
                   "the fixed batch of the artifact to verify); parity.json's slots are replayed in passes of this size")
    p.add_argument("--tolerance", type=float, help="max abs error (default: parity.json's; tensorrt: 1e-4 fp32, 5e-3 fp16)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    from policyrt.commands._session_args import add_session_arguments

    # No --target-return: the replay commands the returns parity.json recorded.
    add_session_arguments(p, target_return=False)
    p.set_defaults(handler=handle)
    return p


def handle(args) -> int:
    from policyrt.bundle import BundleError, open_bundle
    from policyrt.commands._session_args import session_from_args
    from policyrt.runtime import ALIASES
    from policyrt.runtime.verify import verify_backend
    from policyrt.signing import check_trusted

    session = session_from_args(args)
    options = {}
    if args.precision:
        if ALIASES.get(session.backend, session.backend) != "tensorrt":
            print("verify failed: --precision applies to --backend tensorrt only", file=sys.stderr)
            return 1
        options["precision"] = args.precision
    try:
        options.update(session.backend_options())
        with open_bundle(args.bundle) as bundle:  # a .tar's unpacked copy is removed at the end
            # The signature first: an untrusted bundle is not worth a parity replay.
            signed_by = check_trusted(bundle, session.trust, where=args.bundle) if session.trust else None
            report = verify_backend(bundle, session.backend, args.tolerance, args.batch, **options)
    except (BundleError, ImportError, ValueError, RuntimeError, FileNotFoundError) as err:
        print(f"verify failed: {err}", file=sys.stderr)
        return 1
    if args.json:
        doc = report.to_dict()
        if signed_by:
            doc["signed_by"] = signed_by
        print(json.dumps(doc, indent=2))
    else:
        if signed_by:
            print(f"{args.bundle}: signed by trusted key {signed_by} (trust directory {session.trust})")
        print(report.table())
    return 0 if report.ok else 1
