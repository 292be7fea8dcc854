"""`policyrt serve --config controller.toml`: the controller daemon (controllers/daemon.py)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

DESCRIPTION = """\
Run the controller daemon described by a TOML config (deploy/controller.toml is a commented
example): load the bundle as one batched session with a slot per robot, connect to every robot
endpoint and control them in real time until SIGTERM. Made for systemd (Type=notify, watchdog;
deploy/policyrt-controller.service) and just as usable from a shell.

signals:
  SIGTERM, SIGINT  send every robot its safe action, flush the recorders, exit 0
  SIGHUP           re-read the config, load its bundle, verify it against its parity.json and
                   swap it in at the next tick boundary (state reset); a bundle that fails is
                   refused with the reason and the running one keeps going
  SIGUSR1          dump the flight recorder

Each key is one of the controller's settings: `policyrt run --mode realtime` takes the same ones
as flags (`policyrt run --help`), and both are built into a controller by the same code.

--check loads and checks everything (config keys, endpoints and keys, the recording directory,
bundle, backend, parity, a warm-up step at the robots' batch) without connecting to a robot, and
exits 0 when the daemon would start, 2 when it would not (one line: what to fix).
docs/DAEMON.md has the details: exit codes, files written, telemetry, readiness and watchdog, keys."""

EXAMPLES = """\
examples:
  policyrt serve --config /etc/policyrt/controller.toml --check
  policyrt serve --config deploy/controller.toml
  kill -HUP $(pidof -s policyrt)        # hot reload after replacing the bundle
  systemctl reload policyrt-controller  # the same under systemd"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve",
        help="run the controller daemon from a TOML config (systemd-ready)",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, metavar="FILE", help="the daemon's TOML config")
    p.add_argument(
        "--check",
        action="store_true",
        help="check config, endpoints, keys and bundle (incl. parity) and exit; connects to nothing",
    )
    from policyrt.commands._session_args import add_flag

    add_flag(p, "insecure", help_suffix=" (the same as insecure = true in the config)")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    p.set_defaults(handler=handle)
    return p


def handle(args: argparse.Namespace) -> int:
    from policyrt.controllers import daemon
    from policyrt.controllers.config import load_config

    daemon.setup_logging(args.verbose)
    cfg = None
    try:
        cfg = load_config(args.config)
        if args.insecure:
            cfg = dataclasses.replace(cfg, insecure=True)
        if args.check:
            return _check(cfg, daemon)
        server = daemon.Daemon(cfg)
        server.install_signal_handlers()
        server.start()
    except Exception as exc:  # noqa: BLE001 - every start-up failure is exit 2 (below)
        # Config, keys, endpoint policy, bundle, backend, parity, warm-up, loop settings: one line
        # and exit 2, which the systemd unit does not restart (RestartPreventExitStatus=2) since a
        # restart would fail the same way. ConfigError, AuthError and BundleError are ValueErrors,
        # the core's InferenceFailed a RuntimeError; anything else (an ONNX Runtime error that
        # escaped the bundle's checks) is named by its type, its traceback logged at debug level.
        print(f"policyrt serve: {_one_line(exc, cfg)}", file=sys.stderr)
        if not isinstance(exc, (ValueError, RuntimeError, ImportError, OSError)):
            logging.getLogger("policyrt.daemon").debug("start-up failed", exc_info=exc)
        return 2
    # From here on a failure is a traceback and exit 1: systemd restarts the daemon.
    from policyrt.session_control import release_global_context

    try:
        return server.serve()
    finally:
        release_global_context()  # the final BYE leaves before the process exits


def _one_line(exc: BaseException, cfg) -> str:
    """The exception's first line. A type the start-up does not expect can only come from loading
    the bundle (config, keys and endpoints fail as ValueError or OSError): it is named with the
    bundle (`B: cannot load the bundle: Fail: ...`)."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    if isinstance(exc, (ValueError, RuntimeError, ImportError, OSError)):
        return text or type(exc).__name__
    where = f"{cfg.bundle}: cannot load the bundle: " if cfg is not None else ""
    return f"{where}{type(exc).__name__}: {text} (--verbose logs the traceback)"


def _check(cfg, daemon) -> int:
    from policyrt.controllers import build
    from policyrt.controllers.core import ControlCore, describe_obs_guard, manifest_bounds
    from policyrt.controllers.realtime_loop import STAGES
    from policyrt.controllers.safety import SafetyChain

    build.check_endpoints(cfg)
    build.check_recording(cfg)
    session = build.load_session(cfg)
    try:
        config = build.loop_config(cfg, session.manifest)
        report = daemon.verify_bundle(session.bundle, cfg.session)
        # The session the daemon would run, stepped as its warm-up steps it: a graph that fails at
        # the robots' batch fails here (InferenceFailed), not in the running daemon.
        chain = SafetyChain(*manifest_bounds(session.manifest), batch=session.batch_size)
        ControlCore(session, chain, STAGES).warm_up(config.warmup_steps)
    finally:
        session.close()
    print(
        f"{cfg.origin}: OK -- {len(cfg.robots)} robot(s) at {config.rate_hz:g} Hz, bundle {cfg.bundle} on "
        f"{session.backend_name} (parity {report.steps} steps passed; "
        f"{describe_obs_guard(session.manifest, config.obs_range_factor)})"
    )
    return 0
