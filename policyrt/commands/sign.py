"""`policyrt sign BUNDLE --key SECRET`: add this key's Ed25519 signature to the bundle's signatures.json."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """\
Sign a bundle directory with a secret key from `policyrt keys signing DIR`: the signature covers
the bundle digest (the manifest, which lists the sha256 of every file), so any later change to a
listed file or to the manifest voids it. It is written into BUNDLE/signatures.json, one entry per
key (signing again with the same key replaces its entry; other keys' entries stay); the digest
does not cover signatures.json, so signing changes nothing that is signed.

A board that sets `trust = DIR` in controller.toml (or --trust DIR on verify, run, eval, bench,
compare, demo) loads only bundles signed by a public key in DIR. Sign the directory, then pack it
if a .tar is wanted: a .tar is refused. docs/BUNDLE.md, "Signatures and trust"."""

EXAMPLES = """\
examples:
  policyrt keys signing ~/release-keys --name release
  policyrt sign bundles/inverted-pendulum-xlstm.policy --key ~/release-keys/release.secret.pem --signer "ci build 412"
  policyrt verify bundles/inverted-pendulum-xlstm.policy --trust /etc/policyrt/trusted"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sign",
        help="sign a bundle with an Ed25519 key (checked by --trust / trust = DIR)",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bundle", metavar="BUNDLE", help="bundle directory (NAME.policy/)")
    p.add_argument("--key", required=True, metavar="SECRET", help="secret key file (NAME.secret.pem)")
    p.add_argument("--signer", metavar="TEXT", help="who or what signs, recorded with the signature (default: user@host)")
    p.set_defaults(handler=handle)
    return p


def handle(args: argparse.Namespace) -> int:
    from policyrt.bundle import BundleError, open_bundle
    from policyrt.signing import SigningError, load_secret_key, sign_bundle

    path = Path(args.bundle)
    if path.is_file():
        print(f"policyrt sign: {path}: a packed bundle cannot be signed; sign the bundle directory, then "
              f"pack it (tar -cf NAME.policy.tar NAME.policy)", file=sys.stderr)
        return 2
    try:
        secret = load_secret_key(args.key)
        entry = sign_bundle(open_bundle(path), secret, args.signer)
    except (BundleError, SigningError, OSError) as exc:
        print(f"policyrt sign: {exc}", file=sys.stderr)
        return 2
    print(f"{path}: signed by {entry['key_id']} ({entry['signer']}), bundle digest {entry['digest']}")
    return 0
