"""`policyrt serve --config controller.toml`: the controller daemon (controllers/daemon.py)."""

from __future__ import annotations

import argparse
import dataclasses
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
bundle, backend, parity) without connecting to a robot, and exits 0 when the daemon would start.
docs/DAEMON.md has the details: files written, telemetry, readiness and watchdog, keys."""

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
    try:
        cfg = load_config(args.config)
        if args.insecure:
            cfg = dataclasses.replace(cfg, insecure=True)
        if args.check:
            return _check(cfg, daemon)
        server = daemon.Daemon(cfg)
        server.install_signal_handlers()
        server.start()
    except (ValueError, RuntimeError, ImportError, OSError) as exc:
        # Config, keys, endpoint policy, bundle, backend, parity, loop settings: one line and
        # exit 2, which the systemd unit does not restart (RestartPreventExitStatus=2) since a
        # restart would fail the same way. ConfigError, AuthError and BundleError are ValueErrors.
        print(f"policyrt serve: {exc}", file=sys.stderr)
        return 2
    # From here on a failure is a traceback and exit 1: systemd restarts the daemon.
    from policyrt.session_control import release_global_context

    try:
        return server.serve()
    finally:
        release_global_context()  # the final BYE leaves before the process exits


def _check(cfg, daemon) -> int:
    from policyrt.controllers import build

    build.check_endpoints(cfg)
    build.check_recording(cfg)
    session = build.load_session(cfg)
    try:
        rate = build.loop_config(cfg, session.manifest).rate_hz
        report = daemon.verify_bundle(session.bundle, cfg.session)
    finally:
        session.close()
    print(
        f"{cfg.origin}: OK -- {len(cfg.robots)} robot(s) at {rate:g} Hz, bundle {cfg.bundle} on "
        f"{session.backend_name} (parity {report.steps} steps passed)"
    )
    return 0
