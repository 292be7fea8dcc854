"""The one stop mechanism in the real-time drivers: `policyrt run --mode realtime` and the daemon
(`policyrt serve`) stopped by SIGINT or SIGTERM, started with SIGINT at its default or ignored,
against a robot that streams on its own thread (tests/daemon_helpers.py). Each stop: BYE at the
robot, the summary, exit 0 within 2 s of the signal, no traceback (tests/stop_helpers.py)."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
from daemon_helpers import StreamingRobot
from stop_helpers import (
    BASE_SEED,
    BUNDLE,
    SIGINT_STATES,
    SIGNALS,
    STOP_LIMIT_S,
    Case,
    finish,
    needs_bundle,
    stress,
)
from wire_helpers import PATIENCE_S, ipc_endpoint, reap_processes, start_policyrt


@pytest.fixture(autouse=True)
def _reap():
    yield
    reap_processes()


def stop_realtime(case: Case, command: list[str], endpoint: str) -> str:
    """Start `policyrt COMMAND` controlling a streaming robot at `endpoint`, let it control for a
    random number of ACTs, signal it; returns its stdout after the checks."""
    robot = StreamingRobot(endpoint)
    robot.start()
    try:
        proc = start_policyrt(*command, sigint=case.sigint)
        acts = random.Random(case.seed).randint(1, 60)
        deadline = time.monotonic() + PATIENCE_S
        while robot.act_count() < acts:
            assert proc.poll() is None, f"{case}: exited early: {proc.communicate()}"
            assert time.monotonic() < deadline, f"{case}: no control within {PATIENCE_S:g} s"
            time.sleep(0.005)
        sent = time.monotonic()
        proc.send_signal(case.signum)
        out, _ = finish(proc, sent, case)
        while robot.byes == 0:  # BYE was sent before the exit: it is here or on its way
            assert time.monotonic() - sent < STOP_LIMIT_S, f"{case}: no BYE within {STOP_LIMIT_S:g} s\n{out}"
            time.sleep(0.005)
    finally:
        robot.stop()
    return out


def stop_run_realtime(case: Case) -> None:
    ep = ipc_endpoint()
    out = stop_realtime(case, ["run", str(BUNDLE), "--connect", ep, "--mode", "realtime", "--rate", "100"], ep)
    name = signal.Signals(case.signum).name
    assert out.startswith(f"stopped: interrupted (stopped by {name})"), f"{case}: {out}"


def stop_the_daemon(case: Case, config_dir: Path) -> None:
    ep = ipc_endpoint()
    config = config_dir / f"controller-{case.seed}.toml"
    config.write_text(f'bundle = "{BUNDLE}"\nrobots = ["{ep}"]\nrate_hz = 100\n')
    out = stop_realtime(case, ["serve", "--config", str(config)], ep)
    assert f"stopped by {signal.Signals(case.signum).name}" in out, f"{case}: {out}"


def _cases(kind: str, repeats: int) -> list[Case]:
    rng = random.Random(f"{BASE_SEED}-{kind}")
    return [Case(rng.randrange(2**31), signum, state, "control")
            for signum in SIGNALS for state in SIGINT_STATES.values() for _ in range(repeats)]


@needs_bundle
def test_sigint_with_sigint_ignored_stops_the_realtime_controller_and_the_daemon(tmp_path):
    stress(stop_run_realtime, [Case(BASE_SEED, signal.SIGINT, "SIG_IGN", "control")])
    stress(lambda case: stop_the_daemon(case, tmp_path), [Case(BASE_SEED, signal.SIGINT, "SIG_IGN", "control")])


@pytest.mark.slow
@needs_bundle
def test_stress_signals_stop_the_realtime_controller():
    stress(stop_run_realtime, _cases("realtime", 3))


@pytest.mark.slow
@needs_bundle
def test_stress_signals_stop_the_daemon(tmp_path):
    stress(lambda case: stop_the_daemon(case, tmp_path), _cases("daemon", 3))
