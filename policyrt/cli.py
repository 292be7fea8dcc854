"""The `policyrt` command: one entry point, one module per subcommand under policyrt/commands/.

Signals: main() installs policyrt.stopping.STOP before anything else is imported, so SIGINT and
SIGTERM are handled whatever the process inherited (SIG_IGN from a background start included) and
a signal during start-up is a stop request, not a traceback. The long-running commands
(STOP_DRIVEN) keep it: their drivers stop within one tick or receive, say BYE, print the summary
and exit 0 (training keeps the weights reached so far; eval and demo stop their two child
processes, collect keeps the episodes played). The others are one-shot work that Ctrl-C simply
aborts: for them SIGINT is handed back to KeyboardInterrupt (exit 130) and SIGTERM to its default,
once the command line is parsed.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys

from policyrt.stopping import STOP

# (command, subcommand) of the commands whose loops watch STOP.
STOP_DRIVEN = frozenset({("run", None), ("serve", None), ("sim", "serve"), ("train", None),
                         ("eval", None), ("demo", None), ("sim", "collect")})

DESCRIPTION = """\
policyrt deploys sequence-model robot policies (xLSTM, Decision Transformer): train or import a
policy, export it to a parity-checked bundle, step it on ONNX Runtime / PyTorch, and run it as a
ZeroMQ controller against a MuJoCo stand-in robot or a real one."""

EPILOG = """\
the whole path:
  policyrt sim collect --env InvertedPendulum-v5 --expert lqr --episodes 40 --action-noise 0.5 --out data/pendulum
  policyrt train xlstm --data data/pendulum --out checkpoints/pendulum-xlstm
  policyrt export checkpoints/pendulum-xlstm --out bundles/inverted-pendulum-xlstm.policy
  policyrt verify bundles/inverted-pendulum-xlstm.policy
  policyrt eval bundles/inverted-pendulum-xlstm.policy --env InvertedPendulum-v5 --episodes 20 --parallel 10 --report eval/
  policyrt demo

each subcommand has its own --help."""

# Optional libraries -> the extra that installs them. A command reached without its extra (a board
# with `[cpu]` only running `sim serve`, say) ends with one line naming the extra, not a traceback.
EXTRA_OF_MODULE = {
    "gymnasium": "sim", "mujoco": "sim", "minari": "sim",
    "torch": "train", "xlstm": "train", "safetensors": "train", "onnx": "export",
    "onnxruntime": "cpu", "matplotlib": "plot", "imageio": "video", "imageio_ffmpeg": "video",
    "prometheus_client": "telemetry", "transformers": "hf",
}


def build_parser() -> argparse.ArgumentParser:
    from .commands import (
        bench,
        build_engine,
        collect,
        compare,
        demo,
        estop,
        eval,
        export,
        info,
        keys,
        lint,
        run,
        serve,
        sign,
        sim_serve,
        top,
        train,
        verify,
    )

    parser = argparse.ArgumentParser(prog="policyrt", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"policyrt {__import__('policyrt').__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sim = commands.add_parser("sim", help="MuJoCo stand-in robot: collect data, serve the wire protocol",
                              description="Simulation side: a stand-in robot for data collection and closed-loop tests.")
    sim_commands = sim.add_subparsers(dest="sim_command", required=True, metavar="SIM_COMMAND")
    collect.add_parser(sim_commands)
    sim_serve.add_parser(sim_commands)
    for module in (train, export, info, lint, build_engine, sign, verify, compare, run, eval, bench, demo, keys, serve,
                   estop, top):
        module.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    STOP.install()  # first: see the module docstring
    words = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(words)
    # Recorded into datasets, checkpoints and manifests so every artifact says how to remake it.
    args.command_line = shlex.join(["policyrt", *words])
    command = (args.command, getattr(args, "sim_command", None))
    name = " ".join(w for w in command if w)
    try:
        if command not in STOP_DRIVEN:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if STOP.requested:  # a signal during start-up (after the hand-over it is KeyboardInterrupt)
            print(f"policyrt {name}: stopped by {STOP.reason} before it started", file=sys.stderr)
            return 0
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:  # a one-shot command aborted
        print(f"policyrt {name}: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as err:
        extra = EXTRA_OF_MODULE.get((err.name or "").partition(".")[0])
        if extra is None:
            raise
        print(f"policyrt {name}: needs {err.name}, which this install lacks: pip install 'policyrt[{extra}]'",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
