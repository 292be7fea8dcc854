"""The one stop mechanism (policyrt/stopping.py): the StopRequest itself, a Link woken by it, and
the long-running commands stopped by SIGINT or SIGTERM whatever SIGINT state they inherited.

Signals are sent to real child processes only: the test process keeps its own handlers. The
stress tests draw their moments from a base seed (POLICYRT_STOP_SEED, else a fresh one), which
every failure message names; tests/stop_helpers.py says what each moment is."""

from __future__ import annotations

import json
import logging
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from stop_helpers import (
    BASE_SEED,
    BUNDLE,
    SIGINT_STATES,
    SIGNALS,
    Case,
    LockstepRobot,
    SimController,
    finish,
    needs_bundle,
    output_on_failure,
    play_lockstep_until_signal,
    play_sim_until_signal,
    stress,
    wait_for_handlers,
)
from wire_helpers import (
    PATIENCE_S,
    ScriptedRobot,
    endpoint_for,
    pendulum_spec,
    python_env,
    reap_processes,
    start_policyrt,
    start_sim_server,
    with_sigint,
)

from policyrt.link import Link
from policyrt.protocol import Encoder, ErrorTally, MsgType
from policyrt.stopping import StopRequest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_proc = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/PID/status")
PHASES = ("connect", "mid-episode", "between-episodes")
STRESS_REPEATS = 50  # per signal and inherited SIGINT state (issue 11)


@pytest.fixture(autouse=True)
def _reap():
    yield
    reap_processes()


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
inherited = "ignored" if signal.getsignal(signal.SIGINT) is signal.SIG_IGN else "default"
assert STOP.install() is STOP.install()  # idempotent
{setup}
with Link(sys.argv[1], bind=True, stop=STOP) as link:
    print("ready, SIGINT was", inherited, flush=True)
    msg = link.recv(None)
print(msg, STOP.reason, flush=True)
"""


def _blocked_receiver(setup: str = "", ignore_sigint: bool = False) -> subprocess.Popen:
    code = _BLOCKED_RECEIVE.format(setup=textwrap.dedent(setup))
    proc = subprocess.Popen(
        with_sigint([sys.executable, "-c", code, endpoint_for("ipc")], "SIG_IGN" if ignore_sigint else "SIG_DFL"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=python_env(),
        cwd=ROOT,
    )
    inherited = "ignored" if ignore_sigint else "default"
    assert proc.stdout.readline() == f"ready, SIGINT was {inherited}\n", proc.communicate(timeout=PATIENCE_S)
    return proc


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


# --- `policyrt run` (lockstep) against a scripted robot -------------------------------------------


def stop_the_controller(case: Case) -> str:
    """One `policyrt run` stopped at the case's moment: BYE at the robot, the summary, exit 0, all
    within the limit, no traceback. Returns the summary's first line."""
    ep = endpoint_for("ipc")
    robot = ScriptedRobot(ep, pendulum_spec())
    try:
        proc = start_policyrt("run", str(BUNDLE), "--connect", ep, "--robot-timeout", str(PATIENCE_S),
                              sigint=case.sigint)
        lockstep = LockstepRobot(robot, random.Random(case.seed + 1))
        with output_on_failure(proc, case):
            sent = play_lockstep_until_signal(lockstep, proc, case)
            lockstep.until_bye(sent)
        out, _ = finish(proc, sent, case)
    finally:
        robot.close()
    name = signal.Signals(case.signum).name
    assert out.startswith("stopped: interrupted (") and name in out.splitlines()[0], f"{case}: {out}"
    assert "protocol errors: none" in out, f"{case}: {out}"
    return out.splitlines()[0]


@needs_bundle
def test_sigint_and_sigterm_stop_the_lockstep_controller_with_bye_and_a_summary():
    # The fast proof, in both inherited states: mid-episode and between episodes.
    stress(stop_the_controller, [
        Case(BASE_SEED, signal.SIGINT, "SIG_IGN", "mid-episode"),
        Case(BASE_SEED + 1, signal.SIGTERM, "SIG_DFL", "between-episodes"),
    ])


@pytest.mark.slow
@needs_bundle
@pytest.mark.parametrize("sigint_state", SIGINT_STATES)
@pytest.mark.parametrize("signum", SIGNALS, ids=[s.name for s in SIGNALS])
def test_stress_a_signal_at_random_moments_stops_the_lockstep_controller(signum, sigint_state):
    rng = random.Random(f"{BASE_SEED}-{signum}-{sigint_state}")
    cases = [Case(rng.randrange(2**31), signum, SIGINT_STATES[sigint_state], PHASES[i % len(PHASES)])
             for i in range(STRESS_REPEATS)]
    stress(stop_the_controller, cases)


# --- start-up: a signal before the session ------------------------------------------------------


def stop_during_start_up(case: Case) -> None:
    """A signal after main() installed STOP but before the session: importing, loading the bundle,
    or waiting for the SPEC of a robot that never answers. Exit 0, quietly; BYE if HELLO went out."""
    ep = endpoint_for("ipc")
    robot = ScriptedRobot(ep, pendulum_spec())
    try:
        proc = start_policyrt("run", str(BUNDLE), "--connect", ep, sigint=case.sigint)
        wait_for_handlers(proc)
        time.sleep(random.Random(case.seed).uniform(0.0, 0.5))
        sent = time.monotonic()
        proc.send_signal(case.signum)
        out, err = finish(proc, sent, case)
        seen = []
        while (msg := robot.link.recv(0)) is not None:
            seen.append(msg.type)
    finally:
        robot.close()
    name = signal.Signals(case.signum).name
    if MsgType.HELLO in seen:  # it had started a session: it ended it
        assert seen[-1] is MsgType.BYE and out.startswith("stopped: interrupted"), f"{case}: {seen}\n{out}"
    else:
        assert err.strip().splitlines()[-1] == f"policyrt run: stopped by {name} before the session started" or \
            err.strip().splitlines()[-1] == f"policyrt run: stopped by {name} before it started", f"{case}: {err}"


@needs_bundle
@needs_proc
def test_a_signal_during_start_up_ends_the_command_quietly():
    stop_during_start_up(Case(BASE_SEED, signal.SIGINT, "SIG_IGN", "start-up"))


@pytest.mark.slow
@needs_bundle
@needs_proc
@pytest.mark.parametrize("sigint_state", SIGINT_STATES)
@pytest.mark.parametrize("signum", SIGNALS, ids=[s.name for s in SIGNALS])
def test_stress_a_signal_during_start_up_ends_the_command_quietly(signum, sigint_state):
    rng = random.Random(f"{BASE_SEED}-start-{signum}-{sigint_state}")
    stress(stop_during_start_up, [Case(rng.randrange(2**31), signum, SIGINT_STATES[sigint_state], "start-up")
                                  for _ in range(10)])


# --- `policyrt sim serve` against a hand-driven controller ----------------------------------------


def stop_the_sim_server(case: Case) -> None:
    """Like stop_the_controller, from the other end; "start-up": before any controller came (while
    the environment loads or the server waits for HELLO), when there is nobody to say BYE to."""
    ep = endpoint_for("ipc")
    proc = start_sim_server(ep, "--env-arg", "max_episode_steps=6", sigint=case.sigint)
    if case.phase == "start-up":
        wait_for_handlers(proc)
        time.sleep(random.Random(case.seed).uniform(0.0, 1.0))
        sent = time.monotonic()
        proc.send_signal(case.signum)
        out, err = finish(proc, sent, case)
        assert "stopped: interrupted" in out or "before it started" in err, f"{case}: {out}\n{err}"
        return
    ctl = SimController(ep)
    try:
        with output_on_failure(proc, case):
            sent = play_sim_until_signal(ctl, proc, case)
            ctl.until_bye(sent)
        out, _ = finish(proc, sent, case)
    finally:
        ctl.close()
    name = signal.Signals(case.signum).name
    assert "stopped: interrupted" in out and name in out, f"{case}: {out}"


def test_sigterm_stops_the_sim_server_with_bye_and_a_summary():
    stress(stop_the_sim_server, [Case(BASE_SEED, signal.SIGTERM, "SIG_IGN", "mid-episode")])


@pytest.mark.slow
@pytest.mark.parametrize("sigint_state", SIGINT_STATES)
@pytest.mark.parametrize("signum", SIGNALS, ids=[s.name for s in SIGNALS])
def test_stress_a_signal_at_random_moments_stops_the_sim_server(signum, sigint_state):
    rng = random.Random(f"{BASE_SEED}-sim-{signum}-{sigint_state}")
    phases = (*PHASES, "start-up")
    stress(stop_the_sim_server, [Case(rng.randrange(2**31), signum, SIGINT_STATES[sigint_state], phases[i % 4])
                                 for i in range(8)])


# --- `policyrt train`: a stop keeps the weights reached so far -----------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("signum", SIGNALS, ids=[s.name for s in SIGNALS])
def test_a_signal_stops_training_and_keeps_the_weights_reached(tmp_path, signum):
    data, checkpoint = tmp_path / "data", tmp_path / "checkpoint"
    collect = [sys.executable, "-m", "policyrt.cli", "sim", "collect", "--env", "InvertedPendulum-v5",
               "--expert", "lqr", "--episodes", "2", "--out", str(data)]
    subprocess.run(collect, check=True, capture_output=True, env=python_env(), timeout=PATIENCE_S)
    case = Case(BASE_SEED, signum, "SIG_IGN", "training")
    proc = start_policyrt("train", "xlstm", "--data", str(data), "--out", str(checkpoint), "--steps", "1000000",
                          "--save-every", "5", "--embedding-dim", "16", "--num-blocks", "1", "--num-heads", "1",
                          "--batch-size", "4", "--window", "16", sigint=case.sigint)
    deadline = time.monotonic() + PATIENCE_S
    while not (checkpoint / "model.safetensors").exists():  # the first periodic checkpoint: training runs
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    sent = time.monotonic()
    proc.send_signal(signum)
    out, _ = finish(proc, sent, case)
    assert f"stopped by {signal.Signals(signum).name} at step" in out, out
    done = json.loads((checkpoint / "config.json").read_text())["train_steps_done"]
    assert 5 <= done < 1000000 and f"trained {done} steps" in out, out
