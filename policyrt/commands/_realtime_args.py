"""The controller's settings as `policyrt run` flags, generated from the schema (controllers/settings.py).

The same settings a daemon reads from its TOML file: the bundle, --connect, --insecure and
--spin-us (which lockstep uses too) go with the command's own options, the session flags come
from commands/_session_args.py, and the rest form the "real-time mode" group; given in lockstep,
those are refused rather than ignored. --duration is not a setting of the controller but of this
run, so it is defined here.
"""

from __future__ import annotations

import argparse

from policyrt.commands._session_args import SESSION, add_flag, dest, values_from_args
from policyrt.controllers.settings import SETTINGS, ControllerSettings, assemble

# `run`'s own options among the settings (lockstep uses them too), and the --mode realtime ones.
GENERAL = tuple(n for n, s in SETTINGS.items() if s.shared and n not in SESSION)
REALTIME = tuple(n for n, s in SETTINGS.items() if not s.shared)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def add_general_arguments(p: argparse.ArgumentParser) -> None:
    """The bundle, --connect, --insecure and --spin-us, in the command's own option list."""
    for name in GENERAL:
        add_flag(p, name)


def add_realtime_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "real-time mode (--mode realtime)",
        "the controller's settings; `policyrt serve` reads the same ones from its TOML file\n"
        "(deploy/controller.toml, docs/DAEMON.md), with the same checks and defaults",
    )
    for name in REALTIME:
        add_flag(g, name)
    g.add_argument(
        "--duration", type=_positive, metavar="S", help="stop after S seconds (default: until Ctrl-C or SIGTERM)"
    )


def settings_from_args(args: argparse.Namespace) -> ControllerSettings:
    """The controller's settings from `run`'s flags; raises ValueError naming a bad flag."""
    return assemble(values_from_args(args, SETTINGS))


def realtime_misuse(args) -> str | None:
    """A message when the options do not fit the mode, else None."""
    if args.mode == "realtime":
        if args.episodes is not None or args.stage_times:
            return "--episodes and --stage-times are lockstep options; use --duration in realtime mode"
        return None
    given = [SETTINGS[n].flag for n in REALTIME if getattr(args, dest(SETTINGS[n])) not in (None, False)]
    given += ["--duration"] if args.duration is not None else []
    if given:
        return f"{', '.join(given)} only apply to --mode realtime"
    if len(args.connect) > 1:
        return "lockstep drives one robot endpoint; give --connect once (several robots: --mode realtime)"
    return None
