"""`policyrt run --mode realtime`: build the RealtimeController from the command line and run it."""

from __future__ import annotations

import json
import logging
import signal
import sys

log = logging.getLogger(__name__)


def run_realtime(args, load_session) -> int:
    """load_session(batch_size) -> Session (run.py's loader, which applies --target-return)."""
    from policyrt.controllers.realtime_loop import RealtimeConfig, RealtimeController, format_result
    from policyrt.runtime import BundleError

    robots = list(args.connect)
    try:
        config_kwargs = _config_kwargs(args)
        session = load_session(len(robots))
        rate = args.rate or session.manifest.control_rate_hz
        if not rate:
            raise ValueError("the bundle recommends no control rate: give --rate HZ")
        config = RealtimeConfig(rate_hz=float(rate), **config_kwargs)
        curve = None
        if args.curve_keys:
            from policyrt.controllers.auth import load_client

            curve = load_client(args.curve_keys)
        telemetry = _telemetry(args)
        recorder = _recorder(args)
        episodes = None
        if args.record_episodes:
            from policyrt.controllers.episode_recorder import EpisodeRecorder

            episodes = EpisodeRecorder(
                args.record_episodes, fmt=args.episodes_format, command=getattr(args, "command_line", "")
            )
        controller = RealtimeController(
            session, robots, config, telemetry=telemetry, recorder=recorder, curve=curve, episodes=episodes
        )
    except (BundleError, ImportError, RuntimeError, ValueError) as exc:
        print(f"policyrt run: {exc}", file=sys.stderr)
        return 2
    # SIGTERM (systemd, kill) ends the run like Ctrl-C: safe action, BYE, summary, exit 0.
    signal.signal(signal.SIGTERM, lambda *_: controller.request_stop())
    if recorder is not None:
        recorder.install_signal()
    result = controller.run(stop_after_s=args.duration)
    print(format_result(result), flush=True)
    if args.results:
        with open(args.results, "w") as f:
            json.dump(result.to_dict(), f, indent=2)
    return 0


def _config_kwargs(args) -> dict:
    kwargs = {}
    if args.fallback is not None:
        from policyrt.controllers.safety import parse_fallback

        kwargs["fallback"] = parse_fallback(args.fallback)
    if args.max_delta is not None:
        try:
            values = tuple(float(v) for v in args.max_delta.split(","))
        except ValueError:
            raise ValueError(
                f"--max-delta {args.max_delta!r}: expected a number or comma-separated numbers"
            ) from None
        kwargs["max_delta"] = values[0] if len(values) == 1 else values
    if args.stale_after is not None:
        kwargs["stale_after_s"] = args.stale_after
    if args.sched_fifo is not None:
        kwargs["sched_fifo_priority"] = args.sched_fifo
    if args.cpu is not None:
        kwargs["cpu_affinity"] = args.cpu
    kwargs["lock_memory"] = bool(args.lock_memory)
    if args.spin_us:  # realtime: busy-wait this long before each tick's deadline instead of sleeping
        kwargs["spin_us"] = float(args.spin_us)
    return kwargs


def _telemetry(args):
    if not (args.telemetry or args.prometheus_port):
        return None
    from policyrt.controllers.telemetry import Telemetry

    return Telemetry(pub_endpoint=args.telemetry, prometheus_port=args.prometheus_port)


def _recorder(args):
    if not args.record_dir:
        return None
    from policyrt.controllers.flight_recorder import FlightRecorder

    return FlightRecorder(args.record_dir)
