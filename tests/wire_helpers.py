"""Helpers for tests that talk the wire protocol over real ZeroMQ sockets and real processes.

`RawController` and `ScriptedRobot` are hand-driven ends of a session (real DEALER sockets via
policyrt.link) so tests can send exactly the frames they want, malformed ones included.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from policyrt.link import Link
from policyrt.protocol import HEADER, MAGIC, VERSION, Encoder, Message, MsgType
from policyrt.spec import Spec

TESTS = Path(__file__).resolve().parent
PENDULUM = "InvertedPendulum-v5"
# Guards against a hang only; no test asserts on how long anything took.
PATIENCE_S = 60.0


def free_tcp_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def ipc_endpoint() -> str:
    # Short path: ipc socket paths are limited to ~107 bytes, pytest's tmp_path can be longer.
    return f"ipc://{tempfile.mkdtemp(prefix='prt', dir='/tmp')}/s.sock"


def endpoint_for(transport: str) -> str:
    return free_tcp_endpoint() if transport == "tcp" else ipc_endpoint()


_started: list[subprocess.Popen] = []


def reap_processes() -> None:
    """Kill whatever a failed test left running (call from an autouse fixture)."""
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# Sets SIGINT's disposition (argv[1]: a name in `signal`), then execs the command (argv[2:]), which
# keeps it: an ignored signal survives exec, a handled one is reset to the default by it.
_SIGINT_LAUNCHER = (
    "import os, signal, sys; signal.signal(signal.SIGINT, getattr(signal, sys.argv[1])); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


def with_sigint(cmd: list[str], disposition: str = "SIG_DFL") -> list[str]:
    """`cmd` (cmd[0] an absolute path) started with SIGINT at `disposition`, whatever this process
    has: a pytest run in the background of a non-interactive shell has SIGINT ignored and would
    pass that on to every child (subprocess restores SIGPIPE and SIGXFSZ only). "SIG_IGN" starts
    the child as such a shell starts a background job (`sh -c 'cmd &'`)."""
    return [sys.executable, "-S", "-c", _SIGINT_LAUNCHER, disposition, *cmd]


def _popen(cmd: list[str], sigint: str = "SIG_DFL", output: Path | None = None) -> subprocess.Popen:
    """output: write stdout and stderr to that file instead of pipes, for a process that logs more
    than a pipe holds while the test is not reading it (a full pipe blocks its writes)."""
    sink = subprocess.PIPE if output is None else open(output, "w")  # noqa: SIM115 (the child holds it)
    proc = subprocess.Popen(with_sigint(cmd, sigint), stdout=sink, stderr=sink, text=True, env=python_env())
    if output is not None:
        sink.close()
    _started.append(proc)
    return proc


def python_env() -> dict:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_sim_server(
    endpoint: str, *args: str, results: Path | None = None, sigint: str = "SIG_DFL", output: Path | None = None
) -> subprocess.Popen:
    """`policyrt sim serve` for InvertedPendulum-v5 in its own process (sigint: see with_sigint)."""
    cmd = [sys.executable, "-m", "policyrt.cli", "sim", "serve", "--env", PENDULUM, "--bind", endpoint]
    cmd += ["--connect-timeout", str(PATIENCE_S), *args]
    if results is not None:
        cmd += ["--results", str(results)]
    return _popen(cmd, sigint, output)


def start_scripted_controller(endpoint: str, *args: str, sigint: str = "SIG_DFL") -> subprocess.Popen:
    return _popen([sys.executable, str(TESTS / "scripted_controller.py"), endpoint, *args], sigint)


def start_policyrt(*args: str, sigint: str = "SIG_DFL", output: Path | None = None) -> subprocess.Popen:
    """`policyrt ARGS...` in its own process, output piped or to `output` (sigint: see with_sigint)."""
    return _popen([sys.executable, "-m", "policyrt.cli", *args], sigint, output)


def wait_for_line(stream, needle: str) -> list[str]:
    """Read lines until one contains needle (or EOF); returns what was read."""
    seen = []
    for line in stream:
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"{needle!r} never appeared; got:\n{''.join(seen)}")


class RawController:
    """The controller end of a session, driven by hand."""

    def __init__(self, endpoint: str, act_dim: int = 1):
        self.link = Link(endpoint, bind=False)
        self.enc = Encoder(act_dim=act_dim)

    def recv(self, timeout_s: float = PATIENCE_S) -> Message:
        """The next message, its values copied out of the link's receive buffer so tests can
        keep several messages around."""
        msg = self.link.recv(timeout_s)
        assert msg is not None, "the robot side said nothing"
        return msg._replace(values=msg.values.copy())

    def hello(self) -> Spec:
        self.link.send(self.enc.control(MsgType.HELLO))
        msg = self.recv()
        assert msg.type is MsgType.SPEC and msg.ack == self.enc.last_seq
        self.link.obs_dim, self.link.act_dim = msg.spec.obs_dim, msg.spec.act_dim
        return msg.spec

    def answer(self, obs: Message, action=(0.0,), flags: int = 0) -> None:
        self.link.send(self.enc.act(np.asarray(action, np.float32), ack=obs.seq, flags=flags))

    def send(self, frame) -> None:
        self.link.send(frame)

    def close(self) -> None:
        self.link.close()


class ScriptedRobot:
    """The robot end of a session (binds), driven by hand: answers HELLO with a SPEC, then sends
    whatever frames the test chooses."""

    def __init__(self, endpoint: str, spec: Spec):
        self.link = Link(endpoint, bind=True)
        self.spec = spec
        self.enc = Encoder(obs_dim=spec.obs_dim, act_dim=spec.act_dim)

    def recv(self, timeout_s: float = PATIENCE_S) -> Message:
        """The next message, values copied (see RawController.recv)."""
        msg = self.link.recv(timeout_s)
        assert msg is not None, "the controller said nothing"
        return msg._replace(values=msg.values.copy())

    def accept(self) -> Message:
        hello = self.recv()
        assert hello.type is MsgType.HELLO
        self.link.send(self.enc.spec(self.spec, ack=hello.seq))
        self.link.obs_dim, self.link.act_dim = self.spec.obs_dim, self.spec.act_dim
        return hello

    def obs(self, obs, reward: float = 0.0, flags: int = 0, episode: int = 0, step: int = 0) -> int:
        """Send an OBS; returns its seq."""
        self.link.send(
            self.enc.obs(np.asarray(obs, np.float32), reward, flags=flags, episode=episode, step=step)
        )
        return self.enc.last_seq

    def send(self, frame) -> None:
        self.link.send(frame)

    def obs_until_answered(self, obs, tries: int = 20, wait_s: float = 1.0) -> tuple[Message, set[int]]:
        """Send an OBS, again with a new seq each `wait_s` without an answer, until an ACT answering
        one of them arrives (frames queued on a connection that ZeroMQ drops are lost with it, and
        the controller's DEALER reconnects); returns that ACT and every seq sent (a late answer to
        an earlier try may still come)."""
        seqs: set[int] = set()
        for _ in range(tries):
            seqs.add(self.obs(obs))
            while (msg := self.link.recv(wait_s)) is not None:
                if msg.type is MsgType.ACT and msg.ack in seqs:
                    return msg._replace(values=msg.values.copy()), seqs
        raise AssertionError(f"no ACT answered any of {len(seqs)} OBS")

    def close(self) -> None:
        self.link.close()


def vm_peak_kib(pid: int) -> int:
    """The process's peak resident set (VmHWM, KiB): a transient allocation shows up in it."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"/proc/{pid}/status has no VmHWM")


def pendulum_spec(low: float = -3.0, high: float = 3.0, obs_dim: int = 4) -> Spec:
    return Spec(
        obs_dim=obs_dim,
        act_dim=1,
        control_rate_hz=25.0,
        action_low=np.array([low], np.float32),
        action_high=np.array([high], np.float32),
        robot="scripted robot",
    )


def frame(mtype, payload=b"", *, flags=0, plen=None, magic=MAGIC, version=VERSION, seq=1, ack=0) -> bytes:
    """A hand-built frame, so malformed ones can be made field by field."""
    plen = len(payload) if plen is None else plen
    return HEADER.pack(magic, version, int(mtype), flags, seq, ack, 123, 0, 0, plen, 0) + payload


def floats(*values) -> bytes:
    return np.array(values, "<f4").tobytes()
