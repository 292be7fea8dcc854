"""Signed bundles: Ed25519 signatures over the bundle digest, and the trust directories that check them.

A release machine holds a secret signing key and signs each bundle it releases (`policyrt sign`);
a board holds only public keys, in a trust directory, and with `trust = DIR` (or `--trust DIR`)
loads no bundle that a key there did not sign. What is signed is the bundle digest
(policyrt.bundle.bundle_digest: the canonical manifest, which lists the sha256 of every file), so
a change to any listed file or to the manifest voids every signature. The signatures live in the
bundle's `signatures.json`, outside the digest: adding one does not change what is signed.

Files (docs/BUNDLE.md, "Signatures and trust"):
- secret key `NAME.secret.pem`: PKCS#8 PEM, unencrypted, mode 0600 (`openssl pkey -in` reads it);
- public key `NAME.pub`: one OpenSSH line `ssh-ed25519 AAAA... NAME` (`ssh-keygen -lf` prints its
  key id); a trust directory holds `*.pub` files, OpenSSH or PEM (SubjectPublicKeyInfo);
- key id: the OpenSSH SHA256 fingerprint of the public key, `SHA256:<base64>`.

Board-side module: standard library and `cryptography`, Python 3.10.
"""

from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import json
import os
import socket
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from policyrt.bundle import SIGNATURES, BundleError

SIGNATURES_VERSION = 1
# Domain separation: a signature made for a bundle can never be replayed as one over anything else.
DOMAIN = b"policyrt-bundle-signature-v1\n"
SECRET_SUFFIX = ".secret.pem"
PUBLIC_SUFFIX = ".pub"
ALGORITHM = "ed25519"
KEYGEN = "policyrt keys signing DIR"


class SigningError(ValueError):
    """A key or signatures.json cannot be used; the message names the file and the fix."""


class UntrustedBundle(BundleError):
    """The bundle carries no signature that a key in the trust directory verifies."""


# --- keys ---


def key_id(public: Ed25519PublicKey) -> str:
    """The OpenSSH fingerprint (`ssh-keygen -lf NAME.pub` prints the same)."""
    line = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _make_private_dir(path: Path) -> None:
    """Create `path` and any missing parent with mode 0700, whatever the umask; an existing one
    that others can write is refused (they could swap the keys in it)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=0o700)
        os.chmod(directory, 0o700)  # mkdir's mode is masked by the umask; chmod's is not
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o022:
        raise SigningError(f"{path}: writable by other users (mode {mode:04o}); chmod go-w {path} (or use a new directory)")


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write `path` whole, with `mode`, and never over an existing file: the content is made in a
    0600 temporary file beside it, then linked into place (link fails if the name exists)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.link(tmp, path)
    finally:
        os.unlink(tmp)


def _check_name(name: str) -> None:
    if not name or name.startswith(".") or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise SigningError(f"key name {name!r}: use letters, digits, '-', '_' and '.'")


def generate_signing_key(key_dir, name: str = "release") -> tuple[Path, Path, str]:
    """Write `NAME.secret.pem` (0600) and `NAME.pub` into `key_dir` (created 0700); never
    overwrites a key. Returns (secret file, public file, key id)."""
    _check_name(name)
    key_dir = Path(key_dir)
    secret_file, public_file = key_dir / f"{name}{SECRET_SUFFIX}", key_dir / f"{name}{PUBLIC_SUFFIX}"
    for existing in (secret_file, public_file):
        if existing.exists():
            raise SigningError(f"{existing}: exists already, not overwritten; pick another --name NAME")
    if key_dir.exists() and not key_dir.is_dir():
        raise SigningError(f"{key_dir}: exists and is not a directory")
    _make_private_dir(key_dir)
    secret = Ed25519PrivateKey.generate()
    public = secret.public_key()
    pem = secret.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    ssh_line = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    try:
        _write_new(secret_file, pem, 0o600)
        _write_new(public_file, ssh_line + f" {name}\n".encode(), 0o644)
    except FileExistsError as exc:
        raise SigningError(f"{exc.filename2 or exc.filename}: exists already, not overwritten") from None
    return secret_file, public_file, key_id(public)


def load_secret_key(path) -> Ed25519PrivateKey:
    """The signing key at `path`; refused when it is readable by group or others (as ssh does)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise SigningError(f"{path}: cannot read the signing key: {exc.strerror} (create one: {KEYGEN})") from None
    if mode & 0o077:
        raise SigningError(
            f"{path}: the secret key is readable by others (mode {stat.S_IMODE(mode):04o}); chmod 600 {path}"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"{path}: not an unencrypted PEM PKCS#8 secret key ({_first_line(exc)})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path}: not an Ed25519 key ({type(key).__name__}); create one with {KEYGEN}")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningError(f"{path}: cannot read the public key: {exc.strerror}") from None
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_ssh_public_key(data.strip())
    except (ValueError, TypeError, binascii.Error) as exc:
        raise SigningError(
            f"{path}: not a public key (OpenSSH 'ssh-ed25519 ...' line or PEM): {_first_line(exc)}"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningError(f"{path}: not an Ed25519 public key ({type(key).__name__})")
    return key


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@dataclass(frozen=True)
class TrustedKey:
    name: str  # the public key's file name without .pub
    key_id: str
    public: Ed25519PublicKey


def load_trust_dir(trust_dir) -> dict[str, TrustedKey]:
    """{key id: key} of every `*.pub` in the trust directory; raises UntrustedBundle (one line) when
    the directory is missing, holds no key, holds a key that cannot be read, or is writable by
    anyone (who could then add a key)."""
    trust_dir = Path(trust_dir)
    if not trust_dir.is_dir():
        raise UntrustedBundle(
            f"trust directory {trust_dir}: no such directory (it holds the NAME{PUBLIC_SUFFIX} public keys "
            f"of `{KEYGEN}`)"
        )
    if trust_dir.stat().st_mode & stat.S_IWOTH:
        raise UntrustedBundle(f"trust directory {trust_dir}: writable by anyone, who could add a key; chmod o-w {trust_dir}")
    keys = {}
    for path in sorted(trust_dir.glob(f"*{PUBLIC_SUFFIX}")):
        try:
            public = load_public_key(path)
        except SigningError as exc:
            raise UntrustedBundle(f"trust directory {trust_dir}: {exc}") from None
        trusted = TrustedKey(path.name.removesuffix(PUBLIC_SUFFIX), key_id(public), public)
        keys.setdefault(trusted.key_id, trusted)
    if not keys:
        raise UntrustedBundle(
            f"trust directory {trust_dir}: holds no public key (*{PUBLIC_SUFFIX}); copy the release "
            f"key's NAME{PUBLIC_SUFFIX} there"
        )
    return keys


# --- signatures.json ---


def message(digest: str) -> bytes:
    """What a signature covers: the domain tag, then the bundle digest (hex)."""
    return DOMAIN + digest.encode("ascii")


def read_signatures(bundle_dir) -> list[dict]:
    """The entries of the bundle's signatures.json ([] when it has none)."""
    path = Path(bundle_dir) / SIGNATURES
    if not path.exists():
        return []
    fix = f"remove it and sign the bundle again (policyrt sign {bundle_dir} --key SECRET)"
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SigningError(f"{path}: not readable JSON ({_first_line(exc)}); {fix}") from None
    if not isinstance(doc, dict) or doc.get("schema_version") != SIGNATURES_VERSION:
        raise SigningError(f"{path}: unknown schema_version (this policyrt reads {SIGNATURES_VERSION}); {fix}")
    entries, fields = doc.get("signatures"), ("key_id", "signature", "digest")
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and all(isinstance(e.get(f), str) for f in fields) for e in entries
    ):
        raise SigningError(f"{path}: 'signatures' must be a list of entries with {', '.join(fields)}; {fix}")
    return entries


def _write_signatures(bundle_dir: Path, entries: list[dict]) -> Path:
    """Replace signatures.json atomically (a reader sees the old file or the new one, whole)."""
    path = bundle_dir / SIGNATURES
    text = json.dumps({"schema_version": SIGNATURES_VERSION, "signatures": entries}, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(dir=bundle_dir, prefix=f".{SIGNATURES}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def default_signer() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def sign_bundle(bundle, secret: Ed25519PrivateKey, signer: str | None = None) -> dict:
    """Add (or replace) this key's signature of the opened directory bundle `bundle` in its
    signatures.json; returns the entry written."""
    public = secret.public_key()
    entry = {
        "key_id": key_id(public),
        "algorithm": ALGORITHM,
        "digest": bundle.digest,
        "signature": base64.b64encode(secret.sign(message(bundle.digest))).decode(),
        "signer": signer if signer is not None else default_signer(),
        "signed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    others = [e for e in read_signatures(bundle.path) if e["key_id"] != entry["key_id"]]
    _write_signatures(Path(bundle.path), [*others, entry])
    return entry


def _verifies(key: TrustedKey, entry: dict, digest: str) -> bool:
    try:
        key.public.verify(base64.b64decode(entry["signature"], validate=True), message(digest))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def check_trusted(bundle, trust_dir, where=None) -> str:
    """The name of the trusted key whose signature of `bundle` (an opened Bundle) verifies against
    its digest now; raises UntrustedBundle naming the bundle (`where`, default its path), the
    trust directory and what signed it."""
    where = where if where is not None else bundle.path
    try:
        keys = load_trust_dir(trust_dir)
    except UntrustedBundle as exc:
        raise UntrustedBundle(f"{where}: {exc}") from None
    try:
        entries = read_signatures(bundle.path)
    except SigningError as exc:
        raise UntrustedBundle(f"{where}: {exc}") from None
    voided = []
    for entry in entries:
        key = keys.get(entry["key_id"])
        if key is None:
            continue
        if _verifies(key, entry, bundle.digest):
            return key.name
        voided.append(key)
    if voided:
        key = voided[0]
        raise UntrustedBundle(
            f"{where}: signature by {key.name} ({key.key_id}) does not match the bundle: changed after signing "
            f"(trust directory {trust_dir}); sign it again if the change is meant"
        )
    signed_by = ", ".join(f"{e['key_id']} ({e.get('signer', '?')})" for e in entries) or "none"
    raise UntrustedBundle(f"{where}: not signed by any key in {trust_dir} (signed by: {signed_by})")
