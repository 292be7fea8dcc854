"""The one stop mechanism (policyrt/stopping.py): the StopRequest itself, a Link woken by it, and
every long-running command stopped by SIGINT or SIGTERM whatever SIGINT state it inherited.

Signals are sent to real child processes only: the test process keeps its own handlers."""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from wire_helpers import PATIENCE_S, endpoint_for, python_env

from policyrt.link import Link
from policyrt.protocol import Encoder, ErrorTally, MsgType
from policyrt.stopping import StopRequest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- in this process: programmatic requests -----------------------------------------------------


def test_a_request_from_another_thread_wakes_a_blocked_receive_at_once():
    stop = StopRequest()
    with Link(endpoint_for("ipc"), bind=True, stop=stop) as link:
        threading.Timer(0.2, stop.request, args=("operator",)).start()
        assert link.recv(None) is None  # no timeout: only the stop can end it
        assert stop.requested and stop.reason == "operator"
        assert link.recv(PATIENCE_S) is None  # and every later receive returns at once


def test_frames_still_arrive_before_a_stop_and_the_drain_ends_on_one():
    stop = StopRequest()
    ep = endpoint_for("ipc")
    with Link(ep, bind=True, stop=stop) as robot, Link(ep, bind=False) as controller:
        enc = Encoder()
        controller.send(enc.control(MsgType.HELLO))
        msg = robot.recv(PATIENCE_S)
        assert msg is not None and msg.type is MsgType.HELLO
        for _ in range(3):
            controller.send(enc.control(MsgType.HEARTBEAT))
        assert robot.recv(PATIENCE_S).type is MsgType.HEARTBEAT  # waits for the first of them
        stop.request()
        assert list(robot.pending(10, ErrorTally(logging.getLogger(__name__), "test"))) == []  # the frames left wait for nobody


def test_the_first_reason_wins_and_the_descriptor_stays_readable():
    stop = StopRequest()
    assert not stop.requested and stop.reason is None and not stop.wait(0.01)
    assert not select.select([stop.fileno()], [], [], 0)[0]
    stop.request("first")
    stop.request("second")
    assert stop.reason == "first" and stop.wait(PATIENCE_S)
    for _ in range(2):  # level-triggered: every poller sees it, however often it looks
        assert select.select([stop.fileno()], [], [], 0)[0]
        assert not stop.spurious_wakeup()


def test_a_forked_child_has_its_own_wake_up_descriptor():
    stop = StopRequest()
    pid = os.fork()
    if pid == 0:  # the child: its request must not wake the parent
        stop.request("child")
        os._exit(0 if select.select([stop.fileno()], [], [], 0)[0] else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not stop.requested and not select.select([stop.fileno()], [], [], 0)[0]


# --- child processes: signals ---------------------------------------------------------------------

# Installs STOP and blocks in a receive without a timeout; prints what stopped it.
_BLOCKED_RECEIVE = """
import signal, sys, threading, time
from policyrt.link import Link
from policyrt.stopping import STOP
assert STOP.install() is STOP.install()  # idempotent
{setup}
with Link(sys.argv[1], bind=True, stop=STOP) as link:
    print("ready", flush=True)
    msg = link.recv(None)
print(msg, STOP.reason, flush=True)
"""


def _blocked_receiver(setup: str = "", ignore_sigint: bool = False) -> subprocess.Popen:
    code = _BLOCKED_RECEIVE.format(setup=textwrap.dedent(setup))
    proc = subprocess.Popen(
        [sys.executable, "-c", code, endpoint_for("ipc")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=python_env(),
        cwd=ROOT,
        preexec_fn=_ignore_sigint if ignore_sigint else None,
    )
    assert proc.stdout.readline() == "ready\n", proc.communicate(timeout=PATIENCE_S)
    return proc


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stopped_by(proc: subprocess.Popen, signum: int) -> str:
    """Send signum; the process must end cleanly within 2 s of it; returns its last line."""
    sent = time.monotonic()
    proc.send_signal(signum)
    try:
        out, err = proc.communicate(timeout=PATIENCE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    took = time.monotonic() - sent
    assert proc.returncode == 0 and err == "", err
    assert took < 2.0, f"took {took:.2f} s after the signal"
    return out.strip()


@pytest.mark.parametrize("ignore_sigint", [False, True], ids=["sigint-default", "sigint-ignored"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_a_blocked_receive_whatever_sigint_state_was_inherited(signum, ignore_sigint):
    proc = _blocked_receiver(ignore_sigint=ignore_sigint)
    assert _stopped_by(proc, signum) == f"None {signal.Signals(signum).name}"


def test_a_signal_taken_by_another_thread_still_wakes_the_main_threads_receive():
    # The main thread blocks SIGINT, so the kernel must hand it to the sleeping helper thread:
    # only the interpreter's wake-up descriptor can then end the main thread's poll.
    # (The helper starts first: a thread inherits its creator's signal mask.)
    setup = """
        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    """
    proc = _blocked_receiver(setup)
    assert _stopped_by(proc, signal.SIGINT) == "None SIGINT"


def test_another_handled_signal_wakes_the_receive_without_stopping_it():
    # SIGUSR1 (the flight recorder's dump) writes the wake-up byte too; the receive goes on
    # waiting, and the SIGTERM after it still stops it.
    setup = """
        signal.signal(signal.SIGUSR1, lambda *_: print("usr1", flush=True))
    """
    proc = _blocked_receiver(setup)
    proc.send_signal(signal.SIGUSR1)
    assert proc.stdout.readline() == "usr1\n"
    assert proc.poll() is None
    assert _stopped_by(proc, signal.SIGTERM) == "None SIGTERM"
