"""The sim server in its own process, driven by a hand-written controller over real sockets."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
from stand_in_session import PENDULUM_GAIN
from wire_helpers import (
    PATIENCE_S,
    PENDULUM,
    RawController,
    endpoint_for,
    reap_processes,
    start_scripted_controller,
    start_sim_server,
    wait_for_line,
)

from policyrt.protocol import HEADER, MAGIC, VERSION, ActFlag, Encoder, MsgType, ObsFlag
from policyrt.sim.robot import spec_for_env

gymnasium = pytest.importorskip("gymnasium")


@pytest.fixture(autouse=True)
def _reap():
    yield
    reap_processes()


def finish(proc) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=PATIENCE_S)
    return proc.returncode, out, err


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_two_truncated_episodes_round_trip_between_processes(transport, tmp_path):
    ep = endpoint_for(transport)
    results = tmp_path / "serve.json"
    events = tmp_path / "events.jsonl"
    server = start_sim_server(ep, "--episodes", "2", "--env-arg", "max_episode_steps=20", "--events", str(events),
                              results=results)
    ctl = RawController(ep)
    try:
        spec = ctl.hello()
        assert (spec.obs_dim, spec.act_dim, spec.control_rate_hz) == (4, 1, 25.0)
        assert spec.robot == PENDULUM and spec.act_names == ("slide",)
        np.testing.assert_array_equal(spec.action_low, [-3.0])

        seen = []  # (episode, step, flags, reward) of every OBS
        while True:
            msg = ctl.recv()
            if msg.type is MsgType.BYE:
                break
            assert msg.type is MsgType.OBS
            seen.append((msg.episode, msg.step, msg.flags, msg.reward))
            # Protocol version 2: the terminal OBS is answered too (its action is ignored, the
            # robot resets on that tick); version 1 left it unanswered.
            ctl.answer(msg, PENDULUM_GAIN @ msg.obs)
    finally:
        ctl.close()
    code, out, err = finish(server)
    assert code == 0, err

    assert seen[0] == (0, 0, ObsFlag.RESET, 0.0)
    assert seen[20] == (0, 20, ObsFlag.TRUNCATED, 1.0)
    assert seen[21] == (1, 0, ObsFlag.RESET, 0.0)
    assert seen[-1][:3] == (1, 20, ObsFlag.TRUNCATED) and len(seen) == 42
    report = json.loads(results.read_text())
    assert report["stop_reason"] == "episodes_done"
    assert [(e["episode_return"], e["length"], e["truncated"]) for e in report["episodes"]] == [
        (20.0, 20, True)
    ] * 2
    assert report["errors"] == {} and report["steps"] == 40
    assert "episodes: 2" in out
    # on_episode: each finished episode's stats as it ended (here written out by --events)
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert [{k: v for k, v in e.items() if k != "event"} for e in lines] == report["episodes"]


def test_a_terminal_obs_waits_for_its_answer_whose_action_is_no_step(tmp_path):
    """Protocol version 2, for one environment as for P: the robot waits for the ACT answering a
    terminal OBS (a stale one does not count), ignores its action and resets on that tick."""
    ep = endpoint_for("ipc")
    results = tmp_path / "serve.json"
    server = start_sim_server(ep, "--episodes", "2", "--env-arg", "max_episode_steps=3", results=results)
    ctl = RawController(ep)
    try:
        ctl.hello()
        obs = ctl.recv()
        for _ in range(3):
            ctl.answer(obs, [0.5])
            obs = ctl.recv()
        assert obs.flags == ObsFlag.TRUNCATED and (obs.episode, obs.step) == (0, 3)
        ctl.send(bytes(Encoder(act_dim=1).act([0.0], ack=obs.seq + 7)))  # stale: still waiting
        assert ctl.link.recv(0.5) is None  # no RESET OBS before the terminal one is answered
        ctl.answer(obs, [3.0])  # ignored: a reset, not a step
        fresh = ctl.recv()
        assert fresh.flags == ObsFlag.RESET and (fresh.episode, fresh.step) == (1, 0) and fresh.reward == 0.0
        obs = fresh
        while not obs.flags & ObsFlag.TRUNCATED:
            ctl.answer(obs)
            obs = ctl.recv()
        assert ctl.recv().type is MsgType.BYE  # the last episode ended: BYE instead of waiting
    finally:
        ctl.close()
    code, _, err = finish(server)
    assert code == 0, err
    report = json.loads(results.read_text())
    assert report["steps"] == 6 and [e["length"] for e in report["episodes"]] == [3, 3]
    assert report["errors"] == {"stale": 1}


def test_sigint_and_sigterm_end_the_server_with_bye_a_summary_and_exit_zero(tmp_path):
    for sig in (signal.SIGINT, signal.SIGTERM):
        ep = endpoint_for("ipc")
        results = tmp_path / f"serve-{sig.name}.json"
        server = start_sim_server(ep, results=results)
        ctl = RawController(ep)
        try:
            ctl.hello()
            ctl.answer(ctl.recv())
            ctl.recv()  # mid-episode: the server waits for this answer
            server.send_signal(sig)
            assert ctl.recv().type is MsgType.BYE
        finally:
            ctl.close()
        code, out, err = finish(server)
        assert code == 0, err
        assert "Traceback" not in err and f"stopped: interrupted (stopped by {sig.name}" in out
        report = json.loads(results.read_text())
        assert report["stop_reason"] == "interrupted" and report["aborted_episodes"] == 1


def test_controller_that_is_killed_ends_the_server_with_a_clear_message(tmp_path):
    ep = endpoint_for("ipc")
    results = tmp_path / "serve.json"
    server = start_sim_server(ep, "--controller-timeout", "1", results=results)
    ctl = start_scripted_controller(ep)
    try:
        wait_for_line(ctl.stderr, "connected to")
    finally:
        ctl.send_signal(signal.SIGKILL)
        ctl.communicate(timeout=PATIENCE_S)
    code, out, err = finish(server)
    assert code == 1
    assert "no message from the controller for 1 s" in err and "disappeared or stalled" in err
    report = json.loads(results.read_text())
    assert report["stop_reason"] == "controller_lost"
    assert "controller_lost" in out


def test_malformed_acts_are_counted_logged_once_per_kind_and_the_episode_goes_on(tmp_path):
    ep = endpoint_for("tcp")
    results = tmp_path / "serve.json"
    server = start_sim_server(ep, "--episodes", "1", "--env-arg", "max_episode_steps=3", results=results)
    ctl = RawController(ep)
    header = HEADER.pack  # hand-built frames for the kinds an honest Encoder cannot produce
    try:
        ctl.hello()
        obs = ctl.recv()
        bad = [
            b"\x01\x02",  # truncated
            header(b"XXXX", VERSION, 4, 0, 1, obs.seq, 0, 0, 0, 4, 0) + b"\0" * 4,  # magic
            header(MAGIC, 1, 4, 0, 1, obs.seq, 0, 0, 0, 4, 0) + b"\0" * 4,  # version: a version-1 peer
            header(MAGIC, VERSION, 42, 0, 1, obs.seq, 0, 0, 0, 0, 0),  # type
            bytes(Encoder(act_dim=2).act([0.0, 0.0], ack=obs.seq)),  # dims
            bytes(Encoder(act_dim=2).act([0.0, 0.0], ack=obs.seq)),  # dims again: counted, not logged
            bytes(Encoder(act_dim=1).act([np.nan], ack=obs.seq)),  # nonfinite
            bytes(Encoder(act_dim=1).act([0.0], ack=obs.seq + 100)),  # stale
            bytes(Encoder(obs_dim=4).obs(np.zeros(4), 0.0)),  # unexpected: OBS to the robot
        ]
        for frame in bad:
            ctl.send(frame)
        while obs.type is MsgType.OBS and not obs.flags & ObsFlag.TRUNCATED:
            ctl.answer(obs)
            obs = ctl.recv()
        assert ctl.recv().type is MsgType.BYE
    finally:
        ctl.close()
    code, _, err = finish(server)
    assert code == 0, err
    report = json.loads(results.read_text())
    assert report["errors"] == {
        "truncated": 1,
        "magic": 1,
        "version": 1,
        "type": 1,
        "dims": 2,
        "nonfinite": 1,
        "stale": 1,
        "unexpected": 1,
    }
    assert report["episodes"][0]["length"] == 3
    assert err.count("rejected a message (dims)") == 1
    assert "peer speaks protocol version 1, this side speaks 2: upgrade the peer" in err


def test_bye_from_the_controller_ends_the_server_cleanly(tmp_path):
    ep = endpoint_for("ipc")
    results = tmp_path / "serve.json"
    server = start_sim_server(ep, results=results)
    ctl = RawController(ep)
    try:
        ctl.hello()
        ctl.answer(ctl.recv())
        ctl.recv()
        ctl.send(ctl.enc.control(MsgType.BYE))
    finally:
        ctl.close()
    code, _, err = finish(server)
    assert code == 0, err
    report = json.loads(results.read_text())
    assert report["stop_reason"] == "controller_left" and report["aborted_episodes"] == 1


def test_hello_mid_session_starts_a_new_episode(tmp_path):
    ep = endpoint_for("ipc")
    results = tmp_path / "serve.json"
    server = start_sim_server(ep, results=results)
    ctl = RawController(ep)
    try:
        ctl.hello()
        ctl.answer(ctl.recv())
        assert ctl.recv().step == 1
        ctl.hello()  # a restarted controller
        fresh = ctl.recv()
        assert fresh.flags == ObsFlag.RESET and fresh.step == 0
        ctl.send(ctl.enc.control(MsgType.BYE))
    finally:
        ctl.close()
    finish(server)
    assert json.loads(results.read_text())["aborted_episodes"] == 1


def reference_pendulum(actions) -> list[np.ndarray]:
    """Observations of InvertedPendulum-v5 reset with seed 0 and stepped with `actions`."""
    env = gymnasium.make(PENDULUM)
    obs, _ = env.reset(seed=0)
    out = [obs]
    for a in actions:
        out.append(env.step(np.array([a], np.float32))[0])
    env.close()
    return [o.astype(np.float32) for o in out]


def test_estop_makes_the_sim_apply_its_safe_action_until_clear(tmp_path):
    ep = endpoint_for("ipc")
    results = tmp_path / "serve.json"
    server = start_sim_server(ep, results=results)
    ctl = RawController(ep)
    try:
        ctl.hello()
        first = ctl.recv()
        ctl.send(ctl.enc.control(MsgType.ESTOP))
        ctl.answer(first, [3.0])  # ignored: e-stop latched
        second = ctl.recv()
        ctl.send(ctl.enc.control(MsgType.CLEAR))
        ctl.answer(second, [3.0])  # applied
        third = ctl.recv()
        ctl.answer(third, [1.0], flags=ActFlag.ESTOP)  # the flag latches it again
        fourth = ctl.recv()
        ctl.send(ctl.enc.control(MsgType.BYE))
    finally:
        ctl.close()
    finish(server)
    ref = reference_pendulum([0.0, 3.0, 0.0])
    for msg, want in zip([first, second, third, fourth], ref):
        np.testing.assert_allclose(msg.obs, want, rtol=1e-6, atol=1e-7)
    assert json.loads(results.read_text())["estops"] == 2


def test_no_controller_within_the_connect_timeout(tmp_path):
    ep = endpoint_for("ipc")
    server = start_sim_server(ep, "--connect-timeout", "0.2")  # the later flag wins
    code, _, err = finish(server)
    assert code == 1 and "no controller said HELLO" in err


def test_serve_refuses_modes_it_does_not_have():
    """The two drivers (lockstep, realtime) are the modes; anything else is refused up front."""
    server = start_sim_server(endpoint_for("ipc"), "--mode", "turbo")
    code, _, err = finish(server)
    assert code == 2 and "invalid choice: 'turbo'" in err and "lockstep" in err


def test_spec_for_env_reads_dims_rate_bounds_and_actuators():
    env = gymnasium.make("Reacher-v5")
    try:
        spec = spec_for_env("Reacher-v5", env)
    finally:
        env.close()
    assert (spec.obs_dim, spec.act_dim) == (10, 2)
    assert spec.control_rate_hz == pytest.approx(50.0)
    assert len(spec.act_names) == 2 and spec.robot == "Reacher-v5"
    np.testing.assert_array_equal(spec.action_low, [-1.0, -1.0])
