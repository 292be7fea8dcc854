"""`policyrt export`: checkpoint -> bundle (step ONNX + manifest + parity.json), parity-checked."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint to a bundle (step ONNX, manifest, parity.json)",
        description="Export a policy checkpoint (config.json + model.safetensors) to NAME.policy/: the "
        "step graph with explicit state, a manifest with checksums and provenance, and parity.json, a "
        "recorded 256-step rollout with resets. The export fails, and writes nothing, if ONNX Runtime "
        "differs from the PyTorch step form by more than --tolerance on any action or state.",
        epilog="example:\n  policyrt export checkpoints/pendulum-xlstm --out bundles/inverted-pendulum-xlstm.policy",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="checkpoint directory")
    p.add_argument("--out", required=True, help="bundle directory to write (NAME.policy)")
    p.add_argument("--name", help="bundle name (default: from --out)")
    p.add_argument("--tolerance", type=float, default=1e-5, help="max abs error allowed (default 1e-5)")
    p.add_argument("--tar", action="store_true", help="also pack the bundle as NAME.policy.tar")
    p.set_defaults(handler=handle)
    return p


def handle(args) -> int:
    from policyrt.bundle import pack_bundle
    from policyrt.export.bundle_export import ExportError, export_bundle

    try:
        out = export_bundle(args.checkpoint, args.out, name=args.name, tolerance=args.tolerance,
                            command=args.command_line)
    except (ExportError, FileNotFoundError, ValueError) as err:
        print(f"export failed: {err}", file=sys.stderr)
        return 1
    if args.tar:
        print(f"packed {pack_bundle(out, out.with_name(out.name + '.tar'))}")
    return 0
