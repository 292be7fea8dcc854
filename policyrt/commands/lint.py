"""`policyrt lint`: will TensorRT (10.3 / 10.12+ / 11) accept this bundle's step graph? No GPU needed."""

from __future__ import annotations

import argparse
import json
import sys

TARGETS = ("trt10.3", "trt10", "trt11")

EPILOG = """\
targets:
  trt10.3   TensorRT 10.3, JetPack 6 (weakly typed: fp16 by builder flag)
  trt10     TensorRT 10.12 and later 10.x (strongly typed fp16 builds)
  trt11     TensorRT 11.x (weak typing removed: fp16 must be in the ONNX)

examples:
  policyrt lint bundles/inverted-pendulum-xlstm.policy
  policyrt lint bundles/inverted-pendulum-dt.policy --target all --precision fp16

Errors (exit 1) mean the TensorRT ONNX parser or this runtime would refuse the graph; warnings mean it
may work but deserves a look. With --precision fp16 on trt10/trt11 the fp16 graph that build-engine
would feed the parser is linted too."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "lint",
        help="check a bundle's step graph against a TensorRT generation's ONNX parser",
        description="Check every operator, attribute and I/O dtype of the bundle's policy.onnx against what "
        "the TensorRT ONNX parser documents for a TensorRT generation, plus what the TensorRT backend needs "
        "(static shapes but the batch, no data-dependent shapes, fp16-safe forms). Each finding says why.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bundle", help="bundle directory or .tar")
    p.add_argument("--target", default="trt10.3", choices=[*TARGETS, "all"], help="TensorRT generation (default trt10.3)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16"], help="the engine precision you plan to build")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.set_defaults(handler=handle)
    return p


def handle(args) -> int:
    from policyrt.bundle import BundleError, open_bundle

    try:
        bundle = open_bundle(args.bundle)
        from policyrt.export.trt_lint import lint_bundle
    except BundleError as err:
        print(f"lint refused: {err}", file=sys.stderr)
        return 1
    except ImportError as err:
        print(f"lint needs the onnx package ({err}): pip install onnx", file=sys.stderr)
        return 1
    targets = TARGETS if args.target == "all" else (args.target,)
    reports = [r for t in targets for r in lint_bundle(bundle, t, args.precision)]
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        print("\n".join(r.table() for r in reports))
    return 0 if all(r.ok for r in reports) else 1
