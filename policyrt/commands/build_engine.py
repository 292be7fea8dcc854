"""`policyrt build-engine`: build the bundle's TensorRT engine on this board (GPU + TensorRT needed)."""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
examples:
  policyrt build-engine bundles/inverted-pendulum-xlstm.policy
  policyrt build-engine bundles/inverted-pendulum-xlstm.policy --precision fp16 --max-batch 256 --opt-batch 256

The engine lands in NAME.policy/engines/<gpu>-trt<version>-<precision>.plan and is recorded in the
manifest (build settings, engine I/O, build log); the bundle's checksums stay valid. An engine only runs
on the GPU model and TensorRT version that built it, so every board builds its own. Before the robot may
use it: policyrt verify NAME.policy --backend tensorrt --precision <precision>"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "build-engine",
        help="build the bundle's TensorRT engine on this board",
        description="Parse the bundle's step graph with TensorRT and build an engine for this GPU: fp32, or "
        "fp16 for the weight projections (state, gates and LayerNorm stay fp32) — by builder flag on "
        "TensorRT 10.0-10.11 (JetPack 6), from an fp16 graph on strongly typed 10.12+ and 11.x. The batch "
        "dimension gets an optimization profile 1..--max-batch; a timing cache is reused across builds.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bundle", help="bundle directory (a .tar is unpacked to a temporary copy: build into a directory)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16"], help="engine precision (default fp32)")
    p.add_argument("--max-batch", type=int, default=1, help="largest batch (slots) the engine serves (default 1)")
    p.add_argument("--opt-batch", type=int, help="batch TensorRT tunes kernels for (default: --max-batch)")
    p.add_argument("--timing-cache", help="timing cache file to reuse and update "
                   "(default: ~/.cache/policyrt/timing/<gpu>-trt<version>.cache)")
    p.add_argument("--workspace-mib", type=int, help="builder workspace limit in MiB (default: TensorRT's)")
    p.set_defaults(handler=handle)
    return p


def handle(args) -> int:
    from pathlib import Path

    from policyrt.bundle import BundleError, open_bundle

    if Path(args.bundle).is_file():
        print(f"build-engine needs a bundle directory, not an archive: unpack {args.bundle} first", file=sys.stderr)
        return 1
    try:
        bundle = open_bundle(args.bundle)
        from policyrt.export.trt_builder import build_engine

        build_engine(bundle, args.precision, args.max_batch, args.opt_batch, args.timing_cache, args.workspace_mib)
    except (BundleError, ImportError, ValueError, RuntimeError) as err:
        print(f"build-engine failed: {err}", file=sys.stderr)
        return 1
    return 0
