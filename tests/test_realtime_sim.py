"""The real-time mode with real processes: the real-time sim server, `policyrt run --mode
realtime` with the shipped xLSTM bundle, SIGKILL and restarts on either side, SIGTERM, and the
operator commands. Progress is read from log lines and result files, never from elapsed time."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from wire_helpers import PATIENCE_S, PENDULUM, endpoint_for, python_env, reap_processes, wait_for_line

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "inverted-pendulum-xlstm.policy"
_procs: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _reap():
    yield
    while _procs:
        proc = _procs.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    reap_processes()


def policyrt(*args: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "policyrt.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=python_env(),
    )
    _procs.append(proc)
    return proc


def realtime_sim(endpoint: str, *args: str, results: Path | None = None) -> subprocess.Popen:
    cmd = ["sim", "serve", "--env", PENDULUM, "--bind", endpoint, "--mode", "realtime", "--rate", "100"]
    cmd += ["--connect-timeout", str(PATIENCE_S), "--controller-timeout", str(PATIENCE_S), *args]
    if results is not None:
        cmd += ["--results", str(results)]
    return policyrt(*cmd)


def realtime_controller(endpoint: str, *args: str) -> subprocess.Popen:
    return policyrt("run", str(BUNDLE), "--connect", endpoint, "--mode", "realtime", "--rate", "100", *args)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=PATIENCE_S)
    return proc.returncode, out, err


@pytest.mark.slow
def test_killed_controller_makes_the_sim_go_safe_and_a_restarted_one_resumes(tmp_path):
    ep = endpoint_for("ipc")
    results = tmp_path / "sim.json"
    sim = realtime_sim(ep, "--act-timeout", "0.1", results=results)
    first = realtime_controller(ep)
    wait_for_line(first.stderr, "connected")
    first.send_signal(signal.SIGKILL)  # no BYE, no safe action: the robot must notice by itself
    first.communicate()
    wait_for_line(sim.stderr, "applying the safe action until the controller is back")
    second = realtime_controller(ep, "--duration", "2")
    lines = wait_for_line(sim.stderr, "ACTs are arriving again")
    assert any("starting a new session" in line for line in lines)
    code, out, _ = finish(second)
    assert code == 0 and "stopped: duration" in out
    code, out, err = finish(sim)
    assert code == 0, err
    result = json.loads(results.read_text())
    assert result["stop_reason"] == "controller_left"  # the second controller's BYE
    assert result["controller_sessions"] == 2
    assert result["safe_events"] >= 1 and result["safe_steps"] >= 1
    assert result["acts"] > 0 and result["errors"] == {}, err


@pytest.mark.slow
def test_robot_restart_mid_episode_is_reconnected(tmp_path):
    ep = endpoint_for("ipc")
    first = realtime_sim(ep)
    controller = realtime_controller(ep, "--results", str(tmp_path / "run.json"))
    wait_for_line(controller.stderr, "connected")
    first.send_signal(signal.SIGKILL)  # the robot dies mid-episode
    first.communicate()
    results = tmp_path / "sim2.json"
    second = realtime_sim(ep, "--duration", "1", results=results)
    wait_for_line(controller.stderr, "connected")  # HELLO again, SPEC, controlled again
    code, _, err = finish(second)
    assert code == 0, err
    result = json.loads(results.read_text())
    assert result["controller_sessions"] == 1 and result["acts"] > 0
    controller.send_signal(signal.SIGTERM)
    code, out, err = finish(controller)
    assert code == 0, err
    counters = json.loads((tmp_path / "run.json").read_text())["counters"]
    assert counters["hellos"] >= 2 and counters["resets"] >= 2
    assert counters["fallbacks"]["stale"] >= 1  # while the robot was away


@pytest.mark.slow
def test_sigterm_sends_the_safe_action_and_bye_and_exits_zero(tmp_path):
    ep = endpoint_for("ipc")
    results = tmp_path / "sim.json"
    sim = realtime_sim(ep, results=results)
    controller = realtime_controller(ep)
    wait_for_line(controller.stderr, "connected")
    controller.send_signal(signal.SIGTERM)
    code, out, err = finish(controller)
    assert code == 0, err
    assert "stopped: interrupted (stopped by SIGTERM" in out
    code, _, err = finish(sim)
    assert code == 0, err
    assert json.loads(results.read_text())["stop_reason"] == "controller_left"


@pytest.mark.slow
def test_operator_estop_and_clear_reach_the_controller_through_the_robot(tmp_path):
    ep = endpoint_for("ipc")
    results = tmp_path / "sim.json"
    sim = realtime_sim(ep, results=results)
    controller = realtime_controller(
        ep, "--results", str(tmp_path / "run.json"), "--record-dir", str(tmp_path / "fr")
    )
    wait_for_line(controller.stderr, "connected")
    code, out, _ = finish(policyrt("estop", ep))
    assert code == 0 and "sent ESTOP" in out
    wait_for_line(controller.stderr, "emergency stop latched")
    code, out, _ = finish(policyrt("estop", ep, "--clear"))
    assert code == 0 and "sent CLEAR" in out
    wait_for_line(controller.stderr, "emergency stop cleared; policy state reset")
    controller.send_signal(signal.SIGTERM)
    assert finish(controller)[0] == 0
    assert finish(sim)[0] == 0
    counters = json.loads((tmp_path / "run.json").read_text())["counters"]
    assert counters["estops"] == 1 and counters["fallbacks"]["estop"] >= 1
    assert json.loads(results.read_text())["estops"] == 1
    assert list((tmp_path / "fr").glob("flight-*-estop.npz"))  # the e-stop was recorded


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_realtime_sim_says_bye_to_its_controller_and_exits_zero(tmp_path, sig):
    from policyrt.link import Link
    from policyrt.protocol import Encoder, MsgType

    ep = endpoint_for("ipc")
    results = tmp_path / "sim.json"
    sim = realtime_sim(ep, results=results)
    # A plain connecting DEALER, as the lockstep controller uses: a ZMQ_IMMEDIATE one (the real-time
    # controller's session link) discards a frame it has received but not yet handed out when the
    # peer's connection closes, and the robot closes right after its BYE (reproduced on a loaded
    # machine: the BYE left the robot and never reached the test). HELLO queues until connected.
    session = Link(ep, bind=False, send_timeout_ms=0)
    try:
        assert session.send(Encoder().control(MsgType.HELLO))
        msg = session.recv(PATIENCE_S)
        assert msg is not None and msg.type is MsgType.SPEC
        sim.send_signal(sig)
        while (msg := session.recv(PATIENCE_S)) is not None and msg.type is not MsgType.BYE:
            pass  # ESTOP/CLEAR repeats are the only other frames the robot sends here
        if msg is None:
            sim.kill()
            raise AssertionError("no BYE from the stopped robot:\n" + "".join(sim.communicate()))
    finally:
        session.close()
    code, out, err = finish(sim)
    assert code == 0, err
    assert "Traceback" not in err and f"stopped: interrupted (stopped by {sig.name}" in out
    assert json.loads(results.read_text())["stop_reason"] == "interrupted"


def test_acts_sent_just_before_the_bye_are_not_counted_as_errors(tmp_path):
    """ACTs (stream link) and the BYE (session link) travel on two sockets with no order between
    them: ACTs sent right before the BYE often reach the robot in the BYE's tick, after it. The
    session is over then; they are not 'unexpected' (the killed-controller test saw one)."""
    import numpy as np

    from policyrt.link import Link
    from policyrt.protocol import Encoder, MsgType
    from policyrt.stream import open_stream_link

    ep = endpoint_for("ipc")
    results = tmp_path / "sim.json"
    sim = realtime_sim(ep, results=results)
    session, stream = Link(ep, bind=False, send_timeout_ms=0), open_stream_link(ep, bind=False)
    try:
        enc = Encoder(act_dim=1)
        assert session.send(enc.control(MsgType.HELLO))
        msg = session.recv(PATIENCE_S)
        assert msg is not None and msg.type is MsgType.SPEC
        stream.send(enc.act(np.zeros(1, np.float32), ack=0))
        session.send(enc.control(MsgType.BYE))  # at once: both arrive before the robot's next tick
        code, _, err = finish(sim)
    finally:
        session.close()
        stream.close()
    assert code == 0, err
    result = json.loads(results.read_text())
    assert result["stop_reason"] == "controller_left" and result["errors"] == {}, err


def test_estop_without_a_robot_says_nothing_was_sent():
    code, _, err = finish(policyrt("estop", endpoint_for("ipc"), "--timeout", "0.2"))
    assert code == 1 and "nothing was sent" in err


def test_top_prints_a_telemetry_snapshot():
    from realtime_helpers import linear_session, run_in_thread

    from policyrt.controllers.realtime_loop import RealtimeController
    from policyrt.controllers.settings import RealtimeConfig
    from policyrt.controllers.telemetry import Telemetry

    tel = endpoint_for("ipc")
    telemetry = Telemetry(tel, publish_hz=50)
    controller = RealtimeController(
        linear_session(), [endpoint_for("ipc")], RealtimeConfig(rate_hz=200.0), telemetry=telemetry
    )
    thread, box = run_in_thread(controller)
    try:
        code, out, err = finish(policyrt("top", tel, "--count", "2"))
        assert code == 0, err
        assert out.count("policyrt controller") == 2 and "deadline misses" in out and "receive" in out
        code, out, _ = finish(policyrt("top", tel, "--once", "--json"))
        snap = json.loads(out)
        assert snap["counters"]["ticks"] > 0 and set(snap["stages"]) >= {"receive", "infer", "filter", "send"}
        assert len(snap["histograms"]["tick"]) == len(snap["bucket_us"])
    finally:
        controller.request_stop()
        thread.join(PATIENCE_S)
    assert telemetry.published > 0 and "error" not in box


def test_top_without_telemetry_times_out_with_a_message():
    code, _, err = finish(policyrt("top", endpoint_for("ipc"), "--once", "--timeout", "0.2"))
    assert code == 1 and "no telemetry" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", str(BUNDLE), "--connect", "ipc:///tmp/x", "--rate", "100"], "only apply to --mode realtime"),
        (
            ["run", str(BUNDLE), "--connect", "ipc:///tmp/x", "--mode", "realtime", "--episodes", "3"],
            "lockstep options",
        ),
        (
            ["run", str(BUNDLE), "--connect", "ipc:///tmp/x", "--mode", "realtime", "--fallback", "brake"],
            "brake",
        ),
        (
            ["sim", "serve", "--env", PENDULUM, "--bind", "ipc:///tmp/x", "--rate", "100"],
            "need --mode realtime",
        ),
        (
            [
                "sim",
                "serve",
                "--env",
                PENDULUM,
                "--bind",
                "ipc:///tmp/x",
                "--mode",
                "realtime",
                "--num-envs",
                "2",
            ],
            "one environment",
        ),
    ],
)
def test_cli_misuse_is_refused_with_a_message(args, message):
    code, _, err = finish(policyrt(*args))
    assert code == 2 and message in err


def test_flight_recorder_dumps_on_request_off_the_hot_path(tmp_path):
    from realtime_helpers import linear_session, run_in_thread, wait_until

    from policyrt.controllers.flight_recorder import FlightRecorder, load_dump
    from policyrt.controllers.realtime_loop import RealtimeController
    from policyrt.controllers.settings import RealtimeConfig

    recorder = FlightRecorder(tmp_path, capacity=16)
    controller = RealtimeController(
        linear_session(), [endpoint_for("ipc")], RealtimeConfig(rate_hz=200.0), recorder=recorder
    )
    thread, _ = run_in_thread(controller)
    wait_until(lambda: recorder.count >= 20, "a full ring")
    recorder.request_dump("sigusr1")
    wait_until(lambda: recorder.dumps, "the dump file")
    controller.request_stop()
    thread.join(PATIENCE_S)
    meta, arrays = load_dump(recorder.dumps[0])
    assert meta["reason"] == "sigusr1" and len(arrays["tick"]) == 16
    assert arrays["obs"].shape == (16, 1, 4) and arrays["stage_ns"].shape == (16, 5)
    assert meta["stages"] == ["receive", "infer", "filter", "send", "tick"]


def test_prometheus_endpoint_serves_the_counters_and_stage_histograms():
    import socket
    import urllib.request

    from realtime_helpers import linear_session, run_in_thread, wait_until

    from policyrt.controllers.realtime_loop import RealtimeController
    from policyrt.controllers.settings import RealtimeConfig
    from policyrt.controllers.telemetry import Telemetry

    pytest.importorskip("prometheus_client")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    telemetry = Telemetry(None, prometheus_port=port, publish_hz=50)
    controller = RealtimeController(
        linear_session(), [endpoint_for("ipc")], RealtimeConfig(rate_hz=200.0), telemetry=telemetry
    )
    thread, _ = run_in_thread(controller)
    try:
        wait_until(lambda: telemetry.published >= 2, "two published snapshots")
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=PATIENCE_S).read().decode()
    finally:
        controller.request_stop()
        thread.join(PATIENCE_S)
    assert "policyrt_ticks " in text and 'policyrt_fallbacks{reason="stale"}' in text
    assert 'policyrt_stage_seconds_count{stage="infer"}' in text


def test_the_realtime_sim_counts_ten_thousand_malformed_frames_and_keeps_stepping(tmp_path):
    import time

    import numpy as np
    from test_realtime_faults import kinds_of, malformed_frames

    from policyrt.protocol import Encoder, MsgType
    from policyrt.stream import open_session_link, open_stream_link

    ep = endpoint_for("ipc")
    results = tmp_path / "sim.json"
    sim = realtime_sim(ep, results=results)
    session, stream = open_session_link(ep, bind=False), open_stream_link(ep, bind=False)
    try:
        enc = Encoder(act_dim=1)
        while not session.send(enc.control(MsgType.HELLO)):  # IMMEDIATE: wait for the connection
            time.sleep(0.01)
        msg = session.recv(PATIENCE_S)
        assert msg is not None and msg.type is MsgType.SPEC
        frames = malformed_frames(10_000, seed=3)
        for frame in frames:
            while not session.send(frame):
                time.sleep(0.001)
        # Still stepping and answering: valid ACTs are applied after the flood.
        for _ in range(20):
            stream.send(enc.act(np.zeros(1, np.float32), ack=0))
            time.sleep(0.01)
        session.send(enc.control(MsgType.BYE))
        code, _, err = finish(sim)
    finally:
        session.close()
        stream.close()
    assert code == 0, err
    result = json.loads(results.read_text())
    assert result["errors"] == kinds_of(frames)
    assert result["stop_reason"] == "controller_left" and result["acts"] > 0 and result["steps"] > 0
