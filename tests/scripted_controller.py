"""Run the lockstep controller loop with a stand-in session in its own process.

Stands in for `policyrt run BUNDLE` until a shipped bundle exists: same loop, same summary, but
the session is tests/stand_in_session.py's LQR policy for InvertedPendulum-v5.

    python tests/scripted_controller.py ENDPOINT [--episodes N] [--results PATH] [--spin-us US]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from stand_in_session import LinearSession  # noqa: E402

from policyrt.controllers.lockstep import run_lockstep  # noqa: E402
from policyrt.controllers.results import format_summary  # noqa: E402
from policyrt.stopping import STOP  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("connect")
    p.add_argument("--episodes", type=int)
    p.add_argument("--results")
    p.add_argument("--spin-us", type=int, default=0)
    p.add_argument("--robot-timeout", type=float, default=10.0)
    args = p.parse_args()
    STOP.install()  # SIGINT/SIGTERM end the run with BYE and a summary, whatever was inherited
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s: %(message)s")
    result = run_lockstep(
        LinearSession.inverted_pendulum(),
        args.connect,
        episodes=args.episodes,
        spin_us=args.spin_us,
        robot_timeout_s=args.robot_timeout,
    )
    print(format_summary(result), flush=True)
    if args.results:
        Path(args.results).write_text(json.dumps(result.to_dict(), indent=2))
    return 1 if result.stop_reason == "robot_lost" else 0


if __name__ == "__main__":
    sys.exit(main())
