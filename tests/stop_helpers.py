"""Helpers for the stop tests (tests/test_stopping.py): a signal sent to a real `policyrt` process
at a chosen moment of a real ZeroMQ session, and the checks every such stop must pass.

The test plays the other end of the session by hand (a robot for `policyrt run`, a controller for
`policyrt sim serve`), so it knows exactly where the session is when it sends the signal, and it
goes on playing its part after the signal (a robot does not stop because its controller was told
to) until BYE arrives. The only time limit asserted is the issue's: BYE and the process's exit
within STOP_LIMIT_S of the signal.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zmq
from wire_helpers import PATIENCE_S, RawController, ScriptedRobot

from policyrt.protocol import MsgType, ObsFlag

STOP_LIMIT_S = 2.0  # from the signal to BYE at the peer and to the process's exit (issue 11)
SIGINT_STATES = {"sigint-default": "SIG_DFL", "sigint-ignored": "SIG_IGN"}
SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Every moment is drawn from this; a failure names it, and POLICYRT_STOP_SEED=N replays it.
BASE_SEED = int(os.environ.get("POLICYRT_STOP_SEED", random.SystemRandom().randrange(2**31)))
BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "inverted-pendulum-xlstm.policy"
needs_bundle = pytest.mark.skipif(not BUNDLE.exists(), reason="the shipped bundle is not built")
_DONE = ObsFlag.TERMINATED | ObsFlag.TRUNCATED


@dataclass(frozen=True)
class Case:
    """One stop: which signal, the SIGINT state the process starts with, and when."""

    seed: int
    signum: int
    sigint: str  # "SIG_DFL" | "SIG_IGN"
    phase: str

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        return f"{name} with SIGINT {self.sigint} at {self.phase} (seed {self.seed})"


def stress(stop_one, cases: list[Case]) -> None:
    """Every case, two processes at a time; all failures reported together (with their seeds)."""
    failures = []

    def attempt(case):
        try:
            stop_one(case)
        except AssertionError as exc:
            failures.append(str(exc))

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(attempt, cases))
    assert not failures, (
        f"{len(failures)}/{len(cases)} stops failed (base seed {BASE_SEED}):\n" + "\n\n".join(failures[:3])
    )


def signal_handlers_installed(pid: int) -> bool:
    """True once the process catches SIGTERM, i.e. once policyrt.cli.main() installed STOP (nothing
    else in a starting interpreter catches SIGTERM)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:  # it has already exited
        return True
    caught = int(next(line for line in text.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def wait_for_handlers(proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while not signal_handlers_installed(proc.pid):
        assert time.monotonic() < deadline, "the process never installed its signal handlers"
        time.sleep(0.002)


def _recv_within_the_limit(link, sent: float):
    """The next message, waiting no later than the stop limit after `sent`; none is a failure."""
    msg = link.recv(max(0.0, sent + STOP_LIMIT_S - time.monotonic()))
    if msg is None:
        raise AssertionError(f"no BYE within {STOP_LIMIT_S:g} s of the signal")
    return msg


@contextmanager
def output_on_failure(proc: subprocess.Popen, case: Case) -> Iterator[None]:
    """A failed assertion inside kills the process and adds what it had said to the message."""
    try:
        yield
    except AssertionError as exc:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{case}: {exc}\n--- stdout ---\n{out[-1500:]}\n--- stderr ---\n{err[-3000:]}") from None


def finish(proc: subprocess.Popen, sent: float, case: Case) -> tuple[str, str]:
    """The process's output after the signal; asserts exit 0 within the limit, no traceback."""
    try:  # waits past the limit: how long it took and what it said help to read a failure
        out, err = proc.communicate(timeout=5 * STOP_LIMIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    took = time.monotonic() - sent
    context = f"{case}: exit {proc.returncode} after {took:.2f} s\n--- stdout ---\n{out[-1500:]}\n--- stderr ---\n{err[-3000:]}"
    assert proc.returncode == 0, context
    assert "Traceback" not in err and "Traceback" not in out, context
    assert took < STOP_LIMIT_S, context
    return out, err


class LockstepRobot:
    """The robot end of a lockstep session (protocol v2: every observation is answered, the
    terminal one included), with toy episodes of random length."""

    def __init__(self, robot: ScriptedRobot, rng: random.Random):
        self.robot, self.rng = robot, rng
        self.episode, self.step, self.length = 0, 0, rng.randint(2, 8)
        self.pending: int | None = None  # seq of the observation waiting for its ACT
        self.session = False

    def start(self) -> None:
        """SPEC to the controller's HELLO, then the first observation."""
        self.robot.link.send(self.robot.enc.spec(self.robot.spec, ack=self.hello_seq))
        self.robot.link.obs_dim, self.robot.link.act_dim = self.robot.spec.obs_dim, self.robot.spec.act_dim
        self.session = True
        self.send_obs()

    def take_hello(self) -> None:
        hello = self.robot.recv()
        assert hello.type is MsgType.HELLO, hello
        self.hello_seq = hello.seq

    def send_obs(self) -> None:
        if self.step == 0:
            flags, reward = ObsFlag.RESET, 0.0
        else:
            flags, reward = (ObsFlag.TRUNCATED if self.step == self.length else 0), 1.0
        obs = np.asarray([self.rng.uniform(-0.1, 0.1) for _ in range(self.robot.spec.obs_dim)], np.float32)
        self.pending = self.robot.obs(obs, reward, flags=flags, episode=self.episode, step=self.step)

    def answered(self, msg) -> bool:
        """Account the ACT answering the pending observation and send the next one; False for any
        other message."""
        if msg.type is not MsgType.ACT or msg.ack != self.pending:
            return False
        if self.step == self.length:  # the terminal observation's answer: a new episode
            self.episode, self.step, self.length = self.episode + 1, 0, self.rng.randint(2, 8)
        else:
            self.step += 1
        self.send_obs()
        return True

    def await_answer(self) -> None:
        msg = self.robot.recv()
        assert self.answered(msg), f"expected the ACT to seq {self.pending}, got {msg}"

    def until_bye(self, sent: float) -> float:
        """Go on playing the robot until BYE; returns when it came (seconds after `sent`)."""
        _never_wait_to_send(self.robot.link)
        if not self.session:
            self.start()
        while True:
            msg = _recv_within_the_limit(self.robot.link, sent)
            if msg.type is MsgType.BYE:
                return time.monotonic() - sent
            self.answered(msg)


def play_lockstep_until_signal(robot: LockstepRobot, proc: subprocess.Popen, case: Case) -> float:
    """Play the session up to the case's moment and send the signal there; returns when."""
    rng = random.Random(case.seed)
    robot.take_hello()
    if case.phase == "connect":
        if rng.random() < 0.5:  # while the controller waits for the SPEC
            return _send(proc, case.signum)
        robot.start()  # or before it has the first observation in hand
        return _send(proc, case.signum)
    robot.start()
    episode = rng.randint(0, 1)
    if case.phase == "mid-episode":
        while robot.episode < episode:
            robot.await_answer()
        step = rng.randint(1, robot.length - 1)
        while robot.step < step:
            robot.await_answer()
        if rng.random() < 0.5:  # the controller is inferring: the observation just went out
            return _send(proc, case.signum)
        msg = robot.robot.recv()  # the controller waits for the next observation
        assert msg.type is MsgType.ACT and msg.ack == robot.pending, msg
        sent = _send(proc, case.signum)
        robot.answered(msg)
        return sent
    assert case.phase == "between-episodes", case.phase
    while not (robot.episode == episode and robot.step == robot.length):
        robot.await_answer()
    # The terminal observation is out: signal before or after its answer, before the next RESET.
    if rng.random() < 0.5:
        msg = robot.robot.recv()
        assert msg.type is MsgType.ACT and msg.ack == robot.pending, msg
        sent = _send(proc, case.signum)
        robot.answered(msg)
        return sent
    return _send(proc, case.signum)


class SimController:
    """The controller end of a session with `policyrt sim serve`: answers each observation."""

    def __init__(self, endpoint: str):
        self.ctl = RawController(endpoint)
        self.obs = None

    def start(self) -> None:
        self.ctl.hello()
        self.obs = self.ctl.recv()

    def answer(self) -> None:
        self.ctl.answer(self.obs)
        self.obs = self.ctl.recv()

    def until_bye(self, sent: float) -> float:
        _never_wait_to_send(self.ctl.link)
        if self.obs is not None:
            self.ctl.answer(self.obs)
        while True:
            msg = _recv_within_the_limit(self.ctl.link, sent)
            if msg.type is MsgType.BYE:
                return time.monotonic() - sent
            if msg.type is MsgType.OBS:
                self.ctl.answer(msg)

    def close(self) -> None:
        self.ctl.close()


def play_sim_until_signal(ctl: SimController, proc: subprocess.Popen, case: Case) -> float:
    rng = random.Random(case.seed)
    ctl.start()
    if case.phase == "connect":
        return _send(proc, case.signum)
    if case.phase == "mid-episode":
        for _ in range(rng.randint(0, 3)):
            ctl.answer()
            if ctl.obs.flags & _DONE:
                break
        return _send(proc, case.signum)
    assert case.phase == "between-episodes", case.phase
    while not ctl.obs.flags & _DONE:
        ctl.answer()
    return _send(proc, case.signum)


def _never_wait_to_send(link) -> None:
    """After the signal the peer may close its socket at any moment, and a DEALER with no peer
    waits its send timeout on every send: a frame it can no longer take is dropped at once, so
    what is measured is the stopping process, not this end's waits."""
    link.sock.setsockopt(zmq.SNDTIMEO, 0)


def _send(proc: subprocess.Popen, signum: int) -> float:
    sent = time.monotonic()
    proc.send_signal(signum)
    return sent
