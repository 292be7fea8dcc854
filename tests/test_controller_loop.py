"""The lockstep controller loop against a hand-driven robot (same process, real sockets, the loop
in a thread) and against the sim server in another process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from stand_in_session import LinearSession, StandInManifest
from wire_helpers import (
    PATIENCE_S,
    ScriptedRobot,
    endpoint_for,
    pendulum_spec,
    python_env,
    reap_processes,
    start_scripted_controller,
    start_sim_server,
    wait_for_line,
)

from policyrt.controllers.core import SpecMismatchError, check_spec
from policyrt.controllers.lockstep import run_lockstep
from policyrt.controllers.results import format_summary
from policyrt.link import Link
from policyrt.protocol import HEADER, MAGIC, VERSION, ActFlag, Encoder, MsgType, ObsFlag, ProtocolError

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "inverted-pendulum-xlstm.policy"


@pytest.fixture(autouse=True)
def _reap():
    yield
    reap_processes()


@pytest.fixture
def pool():
    with ThreadPoolExecutor(1) as ex:
        yield ex


def start_loop(pool, session, endpoint, **kwargs):
    kwargs.setdefault("robot_timeout_s", PATIENCE_S)
    return pool.submit(run_lockstep, session, endpoint, **kwargs)


def pendulum(record=True, gain=None, bias=None) -> LinearSession:
    session = LinearSession.inverted_pendulum(record=record, bias=bias)
    if gain is not None:
        session.gain = np.asarray(gain, np.float32)
    return session


def test_answers_each_obs_with_the_clipped_action_and_the_answered_seq(pool):
    ep = endpoint_for("ipc")
    robot = ScriptedRobot(ep, pendulum_spec(low=-1.0, high=2.0))
    session = pendulum(gain=[[10.0, 0.0, 0.0, 0.0]])
    future = start_loop(pool, session, ep)
    try:
        robot.accept()
        seq = robot.obs([0.5, 0, 0, 0], flags=ObsFlag.RESET, episode=4, step=0)
        act = robot.recv()
        assert act.type is MsgType.ACT and act.ack == seq and (act.episode, act.step) == (4, 0)
        assert act.values[0] == 2.0 and act.flags == 0  # 5.0 clipped to the robot's high bound
        seq = robot.obs([-0.5, 0, 0, 0], reward=1.0, episode=4, step=1)
        act = robot.recv()
        assert act.ack == seq and act.values[0] == -1.0
        robot.send(robot.enc.control(MsgType.BYE))
        result = future.result(PATIENCE_S)
    finally:
        robot.close()
    assert result.stop_reason == "robot_left" and result.ticks == 2
    kinds = [c[0] for c in session.calls]
    assert kinds == ["reset", "step", "step"]
    _, _, reward0, prev0 = session.calls[1]
    _, _, reward1, prev1 = session.calls[2]
    assert reward0.tolist() == [0.0] and prev0.tolist() == [[0.0]]  # nothing applied yet
    assert reward1.tolist() == [1.0] and prev1.tolist() == [[2.0]]  # the action actually sent, not the raw 5.0
    assert set(result.timing) == {"receive", "infer", "filter", "send", "respond"}
    assert result.timing["infer"]["n"] == 2


def test_survives_malformed_messages_of_every_kind(pool):
    ep = endpoint_for("tcp")
    robot = ScriptedRobot(ep, pendulum_spec())
    future = start_loop(pool, pendulum(), ep)
    header = HEADER.pack
    try:
        robot.accept()
        garbage = [
            b"\x00" * 7,  # truncated
            header(b"NOPE", VERSION, 3, 0, 1, 0, 0, 0, 0, 0, 0),  # magic
            header(MAGIC, VERSION - 1, 3, 0, 1, 0, 0, 0, 0, 0, 0),  # version
            header(MAGIC, VERSION, 99, 0, 1, 0, 0, 0, 0, 0, 0),  # type
            header(MAGIC, VERSION, 3, 0x80, 1, 0, 0, 0, 0, 20, 0) + b"\0" * 20,  # flags
            header(MAGIC, VERSION, 3, 0, 1, 0, 0, 0, 0, 8, 0) + b"\0" * 20,  # length
            bytes(Encoder(obs_dim=3).obs(np.zeros(3), 0.0)),  # dims
            bytes(Encoder(obs_dim=4).obs([0, np.nan, 0, 0], 0.0)),  # nonfinite
            bytes(Encoder(act_dim=1).act([0.0], ack=1)),  # unexpected: an ACT to the controller
            bytes(Encoder(obs_dim=4).obs([0, 0, 0, 0], 0.0))[:-2],  # truncated again
        ]
        for frame in garbage:
            robot.send(frame)
        seq = robot.obs([0.01, 0.02, 0, 0], flags=ObsFlag.RESET)
        act = robot.recv()
        assert act.ack == seq
        robot.send(robot.enc.control(MsgType.BYE))
        result = future.result(PATIENCE_S)
    finally:
        robot.close()
    assert result.stop_reason == "robot_left" and result.ticks == 1
    assert result.errors == {
        "truncated": 2,
        "magic": 1,
        "version": 1,
        "type": 1,
        "flags": 1,
        "length": 1,
        "dims": 1,
        "nonfinite": 1,
        "unexpected": 1,
    }


def test_terminal_obs_is_answered_but_no_step_and_the_last_requested_episode_ends_with_bye(pool):
    """Protocol 2: a terminal OBS is answered like any other; its action is ignored by the robot,
    so it is no env step, no previous action and no fallback. The episode that completes the
    requested count gets BYE instead of an answer."""
    ep = endpoint_for("ipc")
    robot = ScriptedRobot(ep, pendulum_spec())
    session = pendulum(gain=[[1.0, 0, 0, 0]], bias=np.array([0.5], np.float32))
    future = start_loop(pool, session, ep, episodes=2)
    try:
        robot.accept()
        robot.obs([0, 0, 0, 0], flags=ObsFlag.RESET)
        robot.recv()
        robot.obs([1, 0, 0, 0], reward=1.0, step=1)
        robot.recv()
        seq = robot.obs([2, 0, 0, 0], reward=0.5, flags=ObsFlag.TERMINATED, step=2)
        terminal = robot.recv()
        assert terminal.type is MsgType.ACT and terminal.ack == seq and terminal.flags == 0
        robot.obs([0, 0, 0, 0], flags=ObsFlag.RESET, episode=1)
        robot.recv()
        robot.obs([0, 0, 0, 0], reward=2.0, flags=ObsFlag.TRUNCATED, episode=1, step=1)
        assert robot.recv().type is MsgType.BYE  # the second episode completes the count
        result = future.result(PATIENCE_S)
    finally:
        robot.close()
    assert result.stop_reason == "episodes_done" and result.ticks == 4 and result.env_steps == 3
    assert result.fallbacks == 0
    steps = [c for c in session.calls if c[0] == "step"]
    assert steps[3][3].tolist() == [[1.5]]  # the reset row's prev_action: the last applied, not 2.5
    first, second = result.episodes
    assert (first.episode_return, first.length, first.terminated, first.truncated) == (1.5, 2, True, False)
    assert (second.episode_return, second.length, second.terminated, second.truncated) == (2.0, 1, False, True)


def test_spec_with_other_dims_is_refused_naming_both_sides(pool):
    ep = endpoint_for("ipc")
    robot = ScriptedRobot(ep, pendulum_spec(obs_dim=11))
    future = start_loop(pool, pendulum(), ep)
    try:
        robot.accept()
        with pytest.raises(SpecMismatchError, match=r"obs_dim=11.*obs_dim=4"):
            future.result(PATIENCE_S)
        assert robot.recv().type is MsgType.BYE  # the robot is told, not left to time out
    finally:
        robot.close()


def test_check_spec_intersects_bounds_and_refuses_disjoint_ones():
    manifest = StandInManifest(4, 1, np.array([-2.0], np.float32), np.array([5.0], np.float32))
    low, high = check_spec(pendulum_spec(low=-3.0, high=3.0), manifest, "ep")
    assert (low.tolist(), high.tolist()) == ([-2.0], [3.0])
    with pytest.raises(SpecMismatchError, match="do not overlap"):
        check_spec(pendulum_spec(low=6.0, high=7.0), manifest, "ep")


def test_silent_robot_ends_the_loop_as_robot_lost(pool):
    ep = endpoint_for("ipc")
    robot = ScriptedRobot(ep, pendulum_spec())
    future = start_loop(pool, pendulum(), ep, robot_timeout_s=0.3)
    try:
        robot.accept()
        result = future.result(PATIENCE_S)
    finally:
        robot.close()
    assert result.stop_reason == "robot_lost" and "for 0.3 s" in result.detail


def test_no_robot_at_all_is_a_timeout_that_says_what_to_start():
    with pytest.raises(TimeoutError, match="policyrt sim serve"):
        run_lockstep(pendulum(), endpoint_for("ipc"), robot_timeout_s=0.2)


def test_non_finite_policy_output_is_replaced_by_the_fallback(pool):
    ep = endpoint_for("ipc")
    robot = ScriptedRobot(ep, pendulum_spec(low=0.5, high=3.0))  # zero is outside: fallback = 0.5
    future = start_loop(pool, pendulum(bias=np.array([np.nan], np.float32)), ep)
    try:
        robot.accept()
        robot.obs([0, 0, 0, 0], flags=ObsFlag.RESET)
        act = robot.recv()
        robot.send(robot.enc.control(MsgType.BYE))
        result = future.result(PATIENCE_S)
    finally:
        robot.close()
    assert act.flags == ActFlag.FALLBACK and act.values.tolist() == [0.5]
    assert result.fallbacks == 1 and result.nonfinite_actions == 1


def test_estop_from_the_robot_latches_the_fallback_until_clear(pool):
    ep = endpoint_for("ipc")
    robot = ScriptedRobot(ep, pendulum_spec())
    future = start_loop(pool, pendulum(gain=[[1.0, 0, 0, 0]]), ep)
    try:
        robot.accept()
        robot.send(robot.enc.control(MsgType.ESTOP))
        robot.obs([2.0, 0, 0, 0], flags=ObsFlag.RESET)
        stopped = robot.recv()
        robot.send(robot.enc.control(MsgType.CLEAR))
        robot.obs([2.0, 0, 0, 0], step=1)
        cleared = robot.recv()
        robot.send(robot.enc.control(MsgType.BYE))
        future.result(PATIENCE_S)
    finally:
        robot.close()
    assert stopped.flags == ActFlag.FALLBACK | ActFlag.ESTOP and stopped.values.tolist() == [0.0]
    assert cleared.flags == 0 and cleared.values.tolist() == [2.0]


def test_busy_polling_receive_answers_the_same_way(pool):
    ep = endpoint_for("tcp")
    robot = ScriptedRobot(ep, pendulum_spec())
    future = start_loop(pool, pendulum(gain=[[1.0, 0, 0, 0]]), ep, spin_us=500)
    try:
        robot.accept()
        for step in range(5):
            seq = robot.obs([0.1 * step, 0, 0, 0], flags=ObsFlag.RESET if step == 0 else 0, step=step)
            act = robot.recv()
            assert act.ack == seq and act.values[0] == pytest.approx(0.1 * step)
        robot.send(robot.enc.control(MsgType.BYE))
        assert future.result(PATIENCE_S).ticks == 5
    finally:
        robot.close()


def test_link_rejects_frames_larger_than_its_buffer():
    ep = endpoint_for("ipc")
    with Link(ep, bind=True) as server, Link(ep, bind=False) as client:
        client.send(b"\0" * (70 * 1024))
        with pytest.raises(ProtocolError) as info:
            server.recv(PATIENCE_S)
        assert info.value.kind == "length"
        assert server.recv(0.0) is None  # nothing left: a timeout, not an error


def test_summary_names_the_stop_reason_episodes_errors_and_stages(pool):
    ep = endpoint_for("ipc")
    robot = ScriptedRobot(ep, pendulum_spec())
    future = start_loop(pool, pendulum(), ep, episodes=1)
    try:
        robot.accept()
        robot.send(b"junk")
        robot.obs([0, 0, 0, 0], flags=ObsFlag.RESET)
        robot.recv()
        robot.obs([0, 0, 0, 0], reward=1.0, flags=ObsFlag.TRUNCATED, step=1)
        result = future.result(PATIENCE_S)
    finally:
        robot.close()
    text = format_summary(result)
    assert "episodes_done" in text and "return mean 1.00" in text and "truncated=1" in text
    assert "infer" in text and "p99 us" in text
    assert json.loads(json.dumps(result.to_dict()))["episodes"][0]["truncated"] is True


# --- closed loop: the sim server in another process -------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_closed_loop_with_the_stand_in_policy_holds_the_pendulum(transport, tmp_path):
    ep = endpoint_for(transport)
    results = tmp_path / "serve.json"
    server = start_sim_server(ep, "--episodes", "1", results=results)
    result = run_lockstep(LinearSession.inverted_pendulum(), ep, robot_timeout_s=PATIENCE_S)
    out, err = server.communicate(timeout=PATIENCE_S)
    assert server.returncode == 0, err
    assert result.stop_reason == "robot_left" and result.env_steps == 1000
    assert result.ticks == 1001  # protocol 2: the terminal observation is answered too
    assert [e.episode_return for e in result.episodes] == [1000.0]
    assert json.loads(results.read_text())["episodes"][0]["episode_return"] == 1000.0


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_controller_started_before_the_robot_binds_still_gets_its_session(pool, transport):
    ep = endpoint_for(transport)
    future = start_loop(pool, LinearSession.inverted_pendulum(), ep, episodes=1)
    server = start_sim_server(ep, "--env-arg", "max_episode_steps=5")  # starts after the controller
    result = future.result(PATIENCE_S)
    server.communicate(timeout=PATIENCE_S)
    assert result.stop_reason == "episodes_done" and result.ticks == 5
    assert server.returncode == 0


@pytest.mark.slow
def test_ctrl_c_stops_the_controller_with_a_summary_and_says_bye(tmp_path):
    ep = endpoint_for("ipc")
    results = tmp_path / "serve.json"
    server = start_sim_server(ep, results=results)  # no episode limit: only the controller ends it
    ctl = start_scripted_controller(ep)
    wait_for_line(ctl.stderr, "episode 0: return")  # a whole episode done: the loop is running
    ctl.send_signal(signal.SIGINT)
    out, err = ctl.communicate(timeout=PATIENCE_S)
    assert ctl.returncode == 0, err
    assert "stopped: interrupted" in out and "respond" in out
    server.communicate(timeout=PATIENCE_S)
    assert server.returncode == 0
    assert json.loads(results.read_text())["stop_reason"] == "controller_left"


@pytest.mark.slow
@pytest.mark.skipif(not BUNDLE.exists(), reason="the shipped bundle is not built yet")
def test_policyrt_run_with_the_shipped_bundle_balances_one_episode(tmp_path):
    ep = endpoint_for("ipc")
    results = tmp_path / "serve.json"
    server = start_sim_server(ep, "--episodes", "1", results=results)
    run = subprocess.run(
        [sys.executable, "-m", "policyrt.cli", "run", str(BUNDLE), "--connect", ep],
        capture_output=True,
        text=True,
        env=python_env(),
        timeout=PATIENCE_S * 5,
    )
    assert run.returncode == 0, run.stderr
    assert "stopped: robot_left" in run.stdout and "return mean 1000.00" in run.stdout
    server.communicate(timeout=PATIENCE_S)
    report = json.loads(results.read_text())
    assert [e["episode_return"] for e in report["episodes"]] == [1000.0]


def test_a_terminal_obs_under_estop_is_answered_safe_and_flagged_but_not_counted(pool):
    ep = endpoint_for("ipc")
    robot = ScriptedRobot(ep, pendulum_spec(low=0.5, high=3.0))  # the safe action: 0.5
    future = start_loop(pool, pendulum(gain=[[1.0, 0, 0, 0]]), ep)
    try:
        robot.accept()
        robot.obs([2.0, 0, 0, 0], flags=ObsFlag.RESET)
        assert robot.recv().values.tolist() == [2.0]
        robot.send(robot.enc.control(MsgType.ESTOP))
        robot.obs([2.0, 0, 0, 0], reward=1.0, step=1)
        stopped = robot.recv()
        robot.obs([2.0, 0, 0, 0], reward=1.0, flags=ObsFlag.TERMINATED, step=2)
        terminal = robot.recv()
        robot.send(robot.enc.control(MsgType.BYE))
        result = future.result(PATIENCE_S)
    finally:
        robot.close()
    for act in (stopped, terminal):
        assert act.flags == ActFlag.FALLBACK | ActFlag.ESTOP and act.values.tolist() == [0.5]
    assert result.fallbacks == 1 and result.env_steps == 2 and result.ticks == 3
