"""A hostile or broken peer on the wire, against the real commands in their own processes: an
oversized frame (memory), a multipart message, seq 0, and out-of-bound or poisonous actions sent to
the sim robot. Each case is one the wire once got wrong (issue 12)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from wire_helpers import (
    PATIENCE_S,
    RawController,
    ScriptedRobot,
    endpoint_for,
    pendulum_spec,
    reap_processes,
    start_policyrt,
    start_sim_server,
    vm_peak_kib,
)

from policyrt.protocol import HEADER, MAGIC, VERSION, Encoder, MsgType, ObsFlag
from policyrt.stream import open_session_link, open_stream_link

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "inverted-pendulum-xlstm.policy"
HUGE = 64 * 1024 * 1024  # one frame of this size grew a receiver by as much before ZMQ_MAXMSGSIZE
REACHER = "Reacher-v5"


@pytest.fixture(autouse=True)
def _reap():
    yield
    reap_processes()


def finish(proc) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=PATIENCE_S)
    return proc.returncode, out, err


def start_controller(ep: str, results: Path):
    """`policyrt run` (lockstep) with the shipped pendulum bundle, connecting to `ep`."""
    return start_policyrt("run", str(BUNDLE), "--connect", ep, "--results", str(results))


def test_a_64_mib_frame_to_the_controller_costs_it_no_memory_and_the_session_goes_on(tmp_path):
    ep = endpoint_for("tcp")
    results = tmp_path / "run.json"
    robot = ScriptedRobot(ep, pendulum_spec())
    run = start_controller(ep, results)
    try:
        robot.accept()
        for step in range(5):  # warm: the loop's buffers and the policy are allocated
            robot.obs_until_answered(np.full(4, 0.01 * step, np.float32))
        before = vm_peak_kib(run.pid)
        robot.send(b"\0" * HUGE)  # libzmq refuses the frame by its announced size, drops the link
        act, _ = robot.obs_until_answered(np.zeros(4, np.float32))  # the DEALER reconnected
        grown = vm_peak_kib(run.pid) - before
        assert np.isfinite(act.values).all()
        robot.send(robot.enc.control(MsgType.BYE))
        code, _, err = finish(run)
    finally:
        robot.close()
    assert code == 0, err
    assert grown * 1024 < HUGE / 16, f"the controller's peak memory grew by {grown} KiB"


def test_a_64_mib_frame_to_the_sim_robot_costs_it_no_memory_and_the_session_goes_on(tmp_path):
    ep = endpoint_for("tcp")
    results = tmp_path / "serve.json"
    server = start_sim_server(ep, "--episodes", "1", "--env-arg", "max_episode_steps=8", results=results)
    ctl = RawController(ep)
    try:
        ctl.hello()
        obs = ctl.recv()
        for _ in range(3):
            ctl.answer(obs)
            obs = ctl.recv()
        before = vm_peak_kib(server.pid)
        ctl.send(b"\0" * HUGE)
        while True:  # answer until the server's next OBS comes through the reconnected link
            ctl.answer(obs)
            nxt = ctl.link.recv(1.0)
            if nxt is not None:
                break
        grown = vm_peak_kib(server.pid) - before
        while nxt.type is MsgType.OBS:
            ctl.answer(nxt)
            nxt = ctl.recv()
        assert nxt.type is MsgType.BYE
    finally:
        ctl.close()
    code, _, err = finish(server)
    assert code == 0, err
    assert grown * 1024 < HUGE / 16, f"the sim server's peak memory grew by {grown} KiB"
    assert json.loads(results.read_text())["stop_reason"] == "episodes_done"


def test_a_multipart_obs_and_a_seq_0_obs_are_rejected_once_each_and_never_answered(tmp_path):
    ep = endpoint_for("ipc")
    results = tmp_path / "run.json"
    robot = ScriptedRobot(ep, pendulum_spec())
    run = start_controller(ep, results)
    try:
        robot.accept()
        robot.obs_until_answered(np.zeros(4, np.float32))
        parts = [bytes(robot.enc.obs(np.full(4, 0.01 * i, np.float32), 1.0, step=i)) for i in (1, 2, 3)]
        part_seqs = {robot.enc.last_seq - 2, robot.enc.last_seq - 1, robot.enc.last_seq}
        robot.link.sock.send_multipart(parts)  # three valid OBS frames, as one message
        seq0 = bytearray(robot.enc.obs(np.zeros(4, np.float32), 1.0, step=4))
        HEADER.pack_into(seq0, 0, MAGIC, VERSION, MsgType.OBS, 0, 0, 0, 0, 0, 4, 20, 0)
        robot.send(bytes(seq0))
        probe = robot.obs(np.zeros(4, np.float32), 1.0, step=5)
        act = robot.recv()  # the first answer after them is the probe's
        assert act.type is MsgType.ACT and act.ack == probe and act.ack not in part_seqs
        robot.send(robot.enc.control(MsgType.BYE))
        code, _, err = finish(run)
    finally:
        robot.close()
    assert code == 0, err
    report = json.loads(results.read_text())
    assert report["errors"] == {"multipart": 1, "seq": 1}


def _serve_reacher(ep: str, tmp_path: Path, *args: str):
    results, events = tmp_path / "serve.json", tmp_path / "events.jsonl"
    server = start_sim_server(ep, "--env", REACHER, "--events", str(events), *args, results=results)
    return server, results, events


@pytest.mark.parametrize("huge", [1e20, 3.4e38])
def test_the_sim_robot_clamps_actions_beyond_its_bounds_counts_them_and_sends_only_finite_obs(huge, tmp_path):
    """Reacher answered an ACT of 1e20 with reward -inf (the controller rejected the OBS and the
    session stalled until its timeout): the robot now applies its announced bounds."""
    ep = endpoint_for("ipc")
    server, results, events = _serve_reacher(ep, tmp_path, "--episodes", "2", "--env-arg", "max_episode_steps=5")
    ctl = RawController(ep, act_dim=2)
    applied = 0
    try:
        spec = ctl.hello()
        assert spec.action_high.tolist() == [1.0, 1.0]
        msg = ctl.recv()  # decode refuses NaN and infinity: every OBS received here is finite
        while msg.type is MsgType.OBS:
            applied += not msg.flags & (ObsFlag.TERMINATED | ObsFlag.TRUNCATED)  # a terminal answer is ignored
            ctl.answer(msg, [huge, -huge])
            msg = ctl.recv()
        assert msg.type is MsgType.BYE
    finally:
        ctl.close()
    code, out, err = finish(server)
    assert code == 0, err
    report = json.loads(results.read_text())
    assert report["stop_reason"] == "episodes_done" and report["errors"] == {}
    assert report["clamped_actions"] == applied == 10 and report["nonfinite_steps"] == 0
    assert all(np.isfinite(e["episode_return"]) for e in report["episodes"])
    assert [json.loads(line)["clamped_actions"] for line in events.read_text().splitlines()] == [5, 5]
    assert "limits: 10 action(s) outside the announced bounds clamped" in out


def test_a_step_the_environment_makes_non_finite_ends_the_episode_truncated_and_the_run_goes_on(tmp_path):
    """reward_control_weight 1e300 turns any action into a reward beyond float32 (-inf on the
    wire): the robot sends the last finite observation, reward 0, TRUNCATED, then a RESET."""
    ep = endpoint_for("ipc")
    server, results, events = _serve_reacher(ep, tmp_path, "--episodes", "3", "--env-arg", "reward_control_weight=1e300")
    ctl = RawController(ep, act_dim=2)
    seen = []
    try:
        ctl.hello()
        msg = ctl.recv()
        while msg.type is MsgType.OBS:
            seen.append(msg)
            ctl.answer(msg, [0.5, -0.5])
            msg = ctl.recv()
        assert msg.type is MsgType.BYE
    finally:
        ctl.close()
    code, out, err = finish(server)
    assert code == 0, err
    assert [(m.flags, m.step) for m in seen] == [(ObsFlag.RESET, 0), (ObsFlag.TRUNCATED, 1)] * 3
    for reset, cut in zip(seen[::2], seen[1::2]):
        assert cut.reward == 0.0 and cut.values[:-1].tolist() == reset.values[:-1].tolist()
    report = json.loads(results.read_text())
    assert report["nonfinite_steps"] == 3 and report["errors"] == {}
    assert [e["nonfinite_cut"] and e["truncated"] for e in report["episodes"]] == [True] * 3
    assert [json.loads(line)["nonfinite_cut"] for line in events.read_text().splitlines()] == [True] * 3
    assert "3 non-finite step(s) cut" in out
    assert err.count("the environment returned a non-finite observation or reward") == 1  # logged once


def test_the_real_time_sim_robot_clamps_an_act_beyond_its_bounds_once_on_receipt(tmp_path):
    ep = endpoint_for("ipc")
    results = tmp_path / "serve.json"
    server = start_sim_server(
        ep, "--env", REACHER, "--mode", "realtime", "--rate", "200", "--controller-timeout", str(PATIENCE_S),
        results=results,
    )
    session, stream = open_session_link(ep, bind=False), open_stream_link(ep, bind=False)
    enc = Encoder(act_dim=2)
    sent = 0
    try:
        while True:  # HELLO until the SPEC comes (the server may not be bound yet)
            session.send(enc.control(MsgType.HELLO))
            msg = session.recv(1.0)
            if msg is not None and msg.type is MsgType.SPEC:
                break
        for link in (session, stream):
            link.obs_dim, link.act_dim = msg.spec.obs_dim, msg.spec.act_dim
        while sent < 20:
            obs = stream.recv(PATIENCE_S)
            assert obs is not None and obs.type is MsgType.OBS
            if not obs.flags & (ObsFlag.TERMINATED | ObsFlag.TRUNCATED):
                stream.send(enc.act([1e20, -3.4e38], ack=obs.seq))
                sent += 1
        session.send(enc.control(MsgType.BYE))
    finally:
        session.sock.close(linger=200)
        stream.close()
    code, out, err = finish(server)
    assert code == 0, err
    report = json.loads(results.read_text())
    assert report["stop_reason"] == "controller_left" and report["errors"] == {}
    # every ACT that arrived before the BYE was clamped on receipt, once (held steps do not count)
    assert 0 < report["clamped_actions"] == report["acts"] <= sent


# `policyrt top ARGS...`, printing its peak resident set (KiB) last, whatever its exit status.
# VmHWM, not getrusage's ru_maxrss: that one keeps the forking parent's peak across exec.
_TOP_WITH_PEAK = (
    "import sys\n"
    "from policyrt.cli import main\n"
    "try:\n"
    "    code = main(sys.argv[1:])\n"
    "finally:\n"
    "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
    "    print('peak', hwm, flush=True)\n"
    "sys.exit(code)\n"
)


def _top_peak_kib(frame: bytes) -> tuple[int, str]:
    """Run `policyrt top --count 1` against an XPUB that publishes `frame` once top subscribed."""
    import subprocess
    import sys

    import zmq
    from wire_helpers import python_env

    ep = endpoint_for("ipc")
    pub = zmq.Context.instance().socket(zmq.XPUB)
    pub.bind(ep)
    top = subprocess.Popen(
        [sys.executable, "-c", _TOP_WITH_PEAK, "top", ep, "--count", "1", "--timeout", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env(),
    )
    try:
        pub.setsockopt(zmq.RCVTIMEO, int(PATIENCE_S * 1000))
        assert pub.recv() == b"\x01"  # top subscribed to everything
        pub.send(frame)
        out, err = top.communicate(timeout=PATIENCE_S)
    finally:
        pub.close(linger=0)
    return int(out.rsplit("peak", 1)[1]), err


def test_policyrt_top_is_not_made_to_allocate_a_64_mib_frame():
    baseline, err = _top_peak_kib(b"not JSON")  # the same path: a frame skipped, then the timeout
    assert "not JSON" in err and "no telemetry" in err
    peak, err = _top_peak_kib(b"not JSON".ljust(HUGE))
    assert (peak - baseline) * 1024 < HUGE / 16, f"policyrt top's peak memory grew by {peak - baseline} KiB"
    assert "not JSON" not in err and "no telemetry" in err  # ZeroMQ dropped the connection at its header
