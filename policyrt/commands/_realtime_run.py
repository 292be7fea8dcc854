"""`policyrt run --mode realtime`: the controller's settings from the flags, built by the same builder
as the daemon's (controllers/build.py), run until --duration or a stop signal."""

from __future__ import annotations

import json
import sys


def run_realtime(args, settings) -> int:
    """settings: the ControllerSettings of the command line (commands/_realtime_args.py)."""
    from policyrt.controllers.build import build_controller
    from policyrt.controllers.results import format_result
    from policyrt.runtime import BundleError

    try:
        controller = build_controller(settings, command=getattr(args, "command_line", ""))
    except (BundleError, ImportError, RuntimeError, ValueError, OSError) as exc:  # OSError: a recorder's directory
        print(f"policyrt run: {exc}", file=sys.stderr)
        return 2
    # SIGTERM (systemd, kill) ends the run like Ctrl-C (safe action, BYE, summary, exit 0): the
    # controller reads policyrt.stopping.STOP, which cli.main() installed first thing.
    if controller.recorder is not None:
        controller.recorder.install_signal()
    result = controller.run(stop_after_s=args.duration)
    print(format_result(result), flush=True)
    if args.results:
        with open(args.results, "w") as f:
            json.dump(result.to_dict(), f, indent=2)
    return 0
