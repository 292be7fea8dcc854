"""`policyrt keys generate DIR`: CURVE key pairs for authenticated, encrypted links.
`policyrt keys signing DIR`: an Ed25519 key pair that signs bundles (policyrt/signing.py)."""

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


SIGNING_DESCRIPTION = """\
Write an Ed25519 key pair that signs bundles into DIR (created with mode 0700): the secret key
NAME.secret.pem (PKCS#8 PEM, mode 0600) and the public key NAME.pub (one OpenSSH line). Existing
keys are never overwritten. Prints the key id, the public key's SHA256 fingerprint (the same as
`ssh-keygen -lf NAME.pub`).

The secret key stays on the release machine (`policyrt sign BUNDLE --key NAME.secret.pem`); a
board gets only NAME.pub, copied into its trust directory (`trust = DIR` in controller.toml,
--trust DIR on the command line)."""

SIGNING_EXAMPLES = """\
examples:
  policyrt keys signing ~/release-keys --name release
  install -m 0644 ~/release-keys/release.pub /etc/policyrt/trusted/   # on each board"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "keys",
        help="generate CURVE keys for authenticated links, or a bundle signing key",
        description="CURVE key management for authenticated, encrypted ZeroMQ links, and the Ed25519 "
        "keys that sign bundles.",
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
    signing = sub.add_parser(
        "signing",
        help="write an Ed25519 bundle signing key pair into DIR",
        description=SIGNING_DESCRIPTION,
        epilog=SIGNING_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    signing.add_argument("dir", metavar="DIR", help="key directory (created mode 0700 if missing)")
    signing.add_argument("--name", default="release", metavar="NAME", help="name of the key pair (default: release)")
    signing.set_defaults(handler=handle_signing)
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


def handle_signing(args: argparse.Namespace) -> int:
    from policyrt.signing import SigningError, generate_signing_key

    try:
        secret, public, key_id = generate_signing_key(args.dir, name=args.name)
    except (SigningError, OSError) as exc:
        print(f"policyrt keys signing: {exc}", file=sys.stderr)
        return 2
    print(f"{secret}\n{public}\nkey id {key_id}")
    return 0
