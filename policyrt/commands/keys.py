"""`policyrt keys generate DIR`: CURVE key pairs for authenticated, encrypted links."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Write CURVE key pairs (ZeroMQ's encryption and authentication) into DIR: the robot side's pair
(server.key, server.key_secret) unless DIR has one already, and a client pair NAME.key /
NAME.key_secret whose public key is added to DIR/authorized_clients/, the list the robot side
accepts. Secret files are mode 0600; existing keys are never overwritten. Run it again with
another --client NAME for each further client (a second controller, an operator's e-stop tool).

Copy to each machine only what its role needs:
  robot side (sim serve --curve-keys DIR):   server.key_secret, authorized_clients/
  controller (serve [auth] keys, run/estop): NAME.key_secret, server.key

Endpoints off loopback are refused without keys unless --insecure (docs/DAEMON.md, "Keys")."""

EXAMPLES = """\
examples:
  policyrt keys generate /etc/policyrt/keys
  policyrt keys generate /etc/policyrt/keys --client operator
  policyrt sim serve --env InvertedPendulum-v5 --bind tcp://0.0.0.0:5555 --curve-keys /etc/policyrt/keys"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "keys",
        help="generate CURVE keys for authenticated links",
        description="CURVE key management for authenticated, encrypted ZeroMQ links.",
    )
    sub = p.add_subparsers(dest="keys_command", required=True, metavar="KEYS_COMMAND")
    gen = sub.add_parser(
        "generate",
        help="write a server key pair and a client key pair into DIR",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gen.add_argument("dir", metavar="DIR", help="key directory (created if missing)")
    gen.add_argument(
        "--client", default="client", metavar="NAME", help="name of the client key pair (default: client)"
    )
    gen.set_defaults(handler=handle)
    return p


def handle(args: argparse.Namespace) -> int:
    from policyrt.controllers.auth import AuthError, generate_keys

    try:
        written = generate_keys(args.dir, client=args.client)
    except (AuthError, OSError) as exc:
        print(f"policyrt keys generate: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0
