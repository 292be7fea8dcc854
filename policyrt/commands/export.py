"""`policyrt export`: checkpoint or foreign model -> bundle (step ONNX + manifest + parity.json)."""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
examples:
  policyrt export checkpoints/pendulum-xlstm --out bundles/inverted-pendulum-xlstm.policy
  policyrt export --from hf-dt hopper-dt/ --context 20 --return-scale 1000 --target-return 3600 \\
      --obs-mean mean.npy --obs-std std.npy --out hopper-dt.policy
  policyrt export --from xlstm-stack my-stack/ --out my-stack.policy

--from reads a model trained elsewhere (see docs/BUNDLE.md, "Importing"): what it cannot infer
must be given on the command line, and what it assumed is written into the manifest."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    from policyrt.policies.dt_config import ACTIVATIONS
    from policyrt.policies.kinds import IMPORTERS

    p = subparsers.add_parser(
        "export",
        help="export a checkpoint (or import a foreign model) to a bundle",
        description="Export a policy to NAME.policy/: the step graph with explicit state, a manifest with "
        "checksums and provenance, and parity.json, a recorded 256-step rollout with resets. The export "
        "fails, and writes nothing, if ONNX Runtime differs from the float64 PyTorch step form by more than "
        "the tolerance on any action or state.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", help="policyrt checkpoint directory, or the model to import with --from")
    p.add_argument("--from", dest="source_format", default="checkpoint",
                   choices=["checkpoint", *IMPORTERS],
                   help="what SOURCE is (default: a policyrt checkpoint)")
    p.add_argument("--out", required=True, help="bundle directory to write (NAME.policy)")
    p.add_argument("--name", help="bundle name (default: from --out)")
    p.add_argument("--tolerance", type=float,
                   help="max error allowed, actions absolute, states scaled by their size (default: 1e-5, or 4x the "
                   "PyTorch fp32 step's own error against the float64 reference when that is larger, up to 1e-4: "
                   "docs/BOARD.md, 'Parity at export')")
    p.add_argument("--tar", action="store_true", help="also pack the bundle as NAME.policy.tar")
    imp = p.add_argument_group("import options (with --from)")
    imp.add_argument("--context", type=int, help="DT context length K (timesteps in the window)")
    imp.add_argument("--return-scale", type=float, help="return-to-go scale (e.g. 1000 for locomotion)")
    imp.add_argument("--target-return", type=float, help="default commanded return at reset")
    imp.add_argument("--obs-mean", metavar="FILE.npy", help="observation mean used in training")
    imp.add_argument("--obs-std", metavar="FILE.npy", help="observation std used in training")
    imp.add_argument("--action-low", type=float, nargs="+", metavar="V", help="action lower bounds")
    imp.add_argument("--action-high", type=float, nargs="+", metavar="V", help="action upper bounds")
    imp.add_argument("--n-head", type=int, help="attention heads (dt-original: not stored in a state dict)")
    imp.add_argument("--activation", choices=ACTIVATIONS, help="dt-original MLP activation (default relu)")
    p.set_defaults(handler=handle)
    return p


def import_options(args) -> dict:
    import numpy as np

    def array(path):
        return None if path is None else np.load(path).astype(np.float32).reshape(-1)

    return {
        "context": args.context,
        "return_scale": args.return_scale,
        "target_return": args.target_return,
        "obs_mean": array(args.obs_mean),
        "obs_std": array(args.obs_std),
        "action_low": args.action_low,
        "action_high": args.action_high,
        "n_head": args.n_head,
        "activation": args.activation,
    }


def handle(args) -> int:
    from policyrt.bundle import pack_bundle
    from policyrt.export.bundle_export import ExportError, export_bundle, export_policy

    try:
        if args.source_format == "checkpoint":
            out = export_bundle(args.source, args.out, name=args.name, tolerance=args.tolerance,
                                command=args.command_line)
        else:
            from policyrt.policies.importers import run_importer

            policy, doc = run_importer(args.source_format, args.source, import_options(args))
            doc.setdefault("commands", []).append(args.command_line)
            out = export_policy(policy, doc, args.source, args.out, name=args.name, tolerance=args.tolerance)
    except (ExportError, FileNotFoundError, ValueError, ImportError) as err:
        print(f"export failed: {err}", file=sys.stderr)
        return 1
    if args.tar:
        print(f"packed {pack_bundle(out, out.with_name(out.name + '.tar'))}")
    return 0
