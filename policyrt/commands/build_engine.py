"""`policyrt build-engine`: build the bundle's TensorRT engine on this board (GPU + TensorRT needed), or
its IREE artifact for a CPU (`--backend iree`: iree-base-compiler needed)."""

from __future__ import annotations

import argparse
import sys

BUILD_BACKENDS = ("tensorrt", "iree")  # the backends whose artifact is built on (or for) the machine that runs it

EPILOG = """\
examples:
  policyrt build-engine bundles/inverted-pendulum-xlstm.policy
  policyrt build-engine bundles/inverted-pendulum-xlstm.policy --precision fp16 --max-batch 256 --opt-batch 256

The engine lands in NAME.policy/engines/<gpu>-trt<version>-<precision>.plan and is recorded in the
manifest (build settings, engine I/O, build log); the bundle's checksums stay valid. An engine only runs
on the GPU model and TensorRT version that built it, so every board builds its own. Before the robot may
use it: policyrt verify NAME.policy --backend tensorrt --precision <precision>

IREE (a compiled CPU step for recurrent policies, e.g. the xLSTM):
  policyrt build-engine bundles/inverted-pendulum-xlstm.policy --backend iree --batch 1 --batch 16
  policyrt build-engine NAME.policy --backend iree --target-cpu cortex-a78ae   # cross-compile for a Jetson Orin

Each batch size gets NAME.policy/engines/iree-<cpu>-b<batch>.vmfb, recorded in the manifest with the
compiler version, flags and target CPU. Before use, on the machine that runs it:
  policyrt verify NAME.policy --backend iree [--batch N]"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "build-engine",
        help="build the bundle's TensorRT engine on this board, or its IREE artifact for a CPU",
        description="Parse the bundle's step graph with TensorRT and build an engine for this GPU: fp32, or "
        "fp16 for the weight projections (state, gates and LayerNorm stay fp32) — by builder flag on "
        "TensorRT 10.0-10.11 (JetPack 6), from an fp16 graph on strongly typed 10.12+ and 11.x. The batch "
        "dimension gets an optimization profile 1..--max-batch; a timing cache is reused across builds.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bundle", help="bundle directory (a .tar is unpacked to a temporary copy: build into a directory)")
    p.add_argument("--backend", default="tensorrt", choices=BUILD_BACKENDS,
                   help="what to build: a TensorRT engine (default) or an IREE artifact for a CPU")
    p.add_argument("--batch", type=int, action="append",
                   help="iree: the fixed batch size to compile for; repeat for several (default 1)")
    p.add_argument("--target-cpu", default="host",
                   help="iree: the CPU to compile for, `host` (default) or an LLVM CPU name such as cortex-a78ae")
    p.add_argument("--target-triple", help="iree: LLVM target triple (default: the host's; "
                   "aarch64-unknown-linux-gnu for ARM CPU names)")
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
    if args.backend != "iree" and (args.batch or args.target_cpu != "host" or args.target_triple):
        print("build-engine failed: --batch, --target-cpu and --target-triple apply to --backend iree only "
              "(TensorRT: --max-batch)", file=sys.stderr)
        return 1
    try:
        bundle = open_bundle(args.bundle)
        if args.backend == "iree":
            from policyrt.runtime.iree_build import build_artifact

            for batch in args.batch or [1]:
                build_artifact(bundle, batch, args.target_cpu, args.target_triple)
            return 0
        from policyrt.export.trt_builder import build_engine

        build_engine(bundle, args.precision, args.max_batch, args.opt_batch, args.timing_cache, args.workspace_mib)
    except (BundleError, ImportError, ValueError, RuntimeError) as err:
        print(f"build-engine failed: {err}", file=sys.stderr)
        return 1
    return 0
