"""CURVE encryption and authentication for policyrt sockets, and the loopback policy.

Off loopback, anyone who can reach a robot's port could otherwise send it actions or clear its
e-stop. ZeroMQ's CURVE mechanism encrypts the link and authenticates both ends: the robot side
(which binds) is a CURVE *server* whose public key the controller must know in advance, and it
accepts only clients whose public keys are in its `authorized_clients/` directory, checked by a
ZAP authenticator (pyzmq's `zmq.auth.thread.ThreadAuthenticator`). A peer with the wrong keys
never completes the handshake, so not one of its frames reaches the application.

Key directory, as `policyrt keys generate DIR` writes it (the directories mode 0700 and secrets
mode 0600 whatever the umask; an existing DIR that others can write is refused):

    DIR/server.key               the robot side's public key: every controller needs it
    DIR/server.key_secret        the robot side's key pair: only the robot side
    DIR/NAME.key                 a client's public key (NAME = "client" by default)
    DIR/NAME.key_secret          that client's key pair: only that client
    DIR/authorized_clients/      public keys the robot side accepts (one NAME.key per client)

The same directory serves a bench (everything on one machine); on a real deployment copy to each
machine only what its role needs (docs/DAEMON.md, "Keys").

Loopback policy: an endpoint that leaves the machine (a tcp address that is not 127.0.0.0/8,
::1 or localhost) needs CURVE keys, or an explicit "insecure" opt-in; `check_endpoint` enforces it
for every bind and connect a policyrt command makes. ipc:// and inproc:// never leave the machine.

Board-side module: standard library, pyzmq only, Python 3.10.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import stat
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

SERVER = "server"
AUTHORIZED = "authorized_clients"


class AuthError(ValueError):
    """Missing or unreadable keys, or an endpoint the loopback policy refuses."""


@dataclass(frozen=True)
class CurveServer:
    """The binding side's CURVE setup: its own key pair and the client keys it accepts."""

    public: bytes
    secret: bytes
    authorized: Path  # directory of accepted client public keys (*.key)

    def configure(self, sock: zmq.Socket, *, bind: bool, context: zmq.Context) -> None:
        """Called by policyrt.link.Link before it binds or connects the socket."""
        # The ZAP handler must be running before the first peer arrives: without one, libzmq
        # lets any CURVE client in.
        _authenticator(context).configure_curve(domain=self.domain, location=str(self.authorized))
        sock.zap_domain = self.domain.encode()
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    @property
    def domain(self) -> str:
        # One ZAP domain per authorized directory, so sockets with different client lists can
        # share a context.
        return "policyrt-" + hashlib.sha256(str(self.authorized).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CurveClient:
    """The connecting side's CURVE setup: its own key pair and the server key it expects."""

    public: bytes
    secret: bytes
    server_public: bytes

    def configure(self, sock: zmq.Socket, *, bind: bool, context: zmq.Context) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = self.server_public


def load_server(key_dir) -> CurveServer:
    """The robot side's setup from a key directory (server.key_secret + authorized_clients/)."""
    key_dir = Path(key_dir)
    public, secret = _key_pair(key_dir / f"{SERVER}.key_secret", key_dir)
    authorized = (key_dir / AUTHORIZED).resolve()
    if not authorized.is_dir() or not any(authorized.glob("*.key")):
        raise AuthError(
            f"{authorized}: no authorized client keys (*.key); a CURVE server would accept nobody. "
            f"Add a client with `policyrt keys generate {key_dir} --client NAME`"
        )
    return CurveServer(public=public, secret=secret, authorized=authorized)


def load_client(key_dir, name: str = "client") -> CurveClient:
    """A controller's (or operator tool's) setup from a key directory: NAME.key_secret + server.key."""
    key_dir = Path(key_dir)
    public, secret = _key_pair(key_dir / f"{name}.key_secret", key_dir, client=name)
    server_file = key_dir / f"{SERVER}.key"
    try:
        server_public, _ = zmq.auth.load_certificate(server_file)
    except (OSError, ValueError) as exc:
        raise AuthError(
            f"{server_file}: cannot read the robot side's public key ({exc}); copy server.key from "
            f"the directory `policyrt keys generate` wrote"
        ) from None
    return CurveClient(public=public, secret=secret, server_public=server_public)


def _key_pair(path: Path, key_dir: Path, client: str | None = None) -> tuple[bytes, bytes]:
    how = f"`policyrt keys generate {key_dir}" + (
        f" --client {client}`" if client and client != "client" else "`"
    )
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise AuthError(f"{path}: cannot read the key pair ({exc}); create it with {how}") from None
    if secret is None:
        raise AuthError(f"{path}: holds no secret key; create the key pair with {how}")
    return public, secret


def generate_keys(key_dir, client: str = "client") -> list[Path]:
    """Write the server key pair (unless the directory has one) and a new client key pair, and
    authorize that client. Never overwrites a key; returns the files written."""
    key_dir = Path(key_dir)
    if not client or client == SERVER or not client.replace("-", "").replace("_", "").isalnum():
        raise AuthError(f"client name {client!r}: use letters, digits, '-' and '_' (not '{SERVER}')")
    if (key_dir / f"{client}.key_secret").exists() or (key_dir / f"{client}.key").exists():
        raise AuthError(f"{key_dir}: a key pair named {client!r} exists already; pick another --client NAME")
    _private_dir(key_dir)
    _private_dir(key_dir / AUTHORIZED)
    written = []
    names = ([SERVER] if not (key_dir / f"{SERVER}.key_secret").exists() else []) + [client]
    for name in names:
        written += _create_pair(key_dir, name)
    authorized = key_dir / AUTHORIZED / f"{client}.key"
    shutil.copyfile(key_dir / f"{client}.key", authorized)
    os.chmod(authorized, 0o644)
    return [*written, authorized]


def _private_dir(path: Path) -> None:
    """Create `path` and its missing parents mode 0700 whatever the umask (mkdir's mode is masked by
    it, chmod's is not): under `umask 000` they would be 0777, and any local user could add an
    authorized client key or swap server.key. An existing directory that others can write is
    refused for the same reason."""
    missing = [d for d in (path, *path.parents) if not d.exists()]
    for d in reversed(missing):
        d.mkdir(mode=0o700)
        os.chmod(d, 0o700)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o022:
        raise AuthError(
            f"{path}: writable by other users (mode {mode:04o}), who could add an authorized client key "
            f"or swap server.key; chmod go-w {path} (or use a new directory)"
        )


def _create_pair(key_dir: Path, name: str) -> list[Path]:
    # Written inside a fresh 0700 directory, restricted, then moved into place: the secret is
    # never readable by others, not even for a moment, whatever the umask.
    staging = Path(tempfile.mkdtemp(prefix=".keys-", dir=key_dir))
    try:
        public, secret = (Path(p) for p in zmq.auth.create_certificates(staging, name))
        os.chmod(secret, 0o600)
        os.chmod(public, 0o644)
        out = [key_dir / public.name, key_dir / secret.name]
        for src, dst in zip((public, secret), out):
            os.replace(src, dst)
        return out
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --- the ZAP authenticator: one per context, started on first use ---

_lock = threading.Lock()
_authenticators: dict[int, tuple[zmq.Context, object]] = {}


def _authenticator(context: zmq.Context):
    from zmq.auth.thread import ThreadAuthenticator

    with _lock:
        entry = _authenticators.get(id(context))
        if entry is None or entry[0] is not context:
            auth = ThreadAuthenticator(context)
            auth.start()
            entry = _authenticators[id(context)] = (context, auth)
        return entry[1]


def stop_authenticators() -> None:
    """Stop every authenticator thread (before terminating their contexts)."""
    with _lock:
        for _, auth in _authenticators.values():
            auth.stop()
        _authenticators.clear()


# --- the loopback policy ---


def is_loopback(endpoint: str) -> bool:
    """True when the endpoint cannot leave this machine."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    rest = endpoint[len("tcp://") :]
    # A connect may name its source first: tcp://SOURCE;HOST:PORT. What matters is the peer.
    host = rest.rpartition(";")[2].rpartition(":")[0].strip("[]")
    if host in ("localhost", "lo"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # '*', 0.0.0.0 is caught above as not loopback; names and interfaces too


def check_endpoint(endpoint: str, *, secured: bool, insecure: bool, what: str, how: str | None) -> None:
    """Refuse an endpoint off loopback that has no CURVE keys, unless `insecure` was chosen.

    what: what the endpoint is for ("robot endpoint", "--bind"); how: the option that gives keys,
    named in the message so the user knows what to do, or None for a socket that has no CURVE
    option (telemetry)."""
    if secured or insecure or is_loopback(endpoint):
        return
    if how is None:
        remedy = "Use a loopback or ipc:// endpoint"
    else:
        remedy = f"Give keys ({how}; create them with `policyrt keys generate DIR`), use a loopback or ipc:// endpoint"
    raise AuthError(
        f"{what} {endpoint} is reachable from other machines and has no CURVE keys: anyone on the "
        f"network could send or read what goes over it. {remedy}, or accept the risk explicitly with "
        f"--insecure (config: insecure = true)"
    )
