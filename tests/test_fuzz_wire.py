"""Fuzzing the wire both ways against the real commands in their own processes, with the counts
asserted: robot-side frames against `policyrt run` (lockstep and real time); controller-side
frames against `policyrt sim serve` are in tests/test_fuzz_sim_serve.py, the shared mutator and
judge in tests/fuzz_helpers.py. Every case: 0 crashes, 0 hangs (the process answers a final
valid exchange and exits 0), 0 non-finite or out-of-bound actions, 0 answers to malformed frames,
and every rejected frame counted.

Frames are mutated from valid ones by a seeded generator (bit flips, truncation, extension,
random bytes, NaN/Inf/1e38 values, header fields including seq 0, multipart messages, frames over
the size limit). Whether a frame is valid is judged with `protocol.decode` and the session's
dims; the checks that do not lean on it (an answer only ever acks a frame judged valid, actions
stay finite within the bounds, the counts add up) would catch a decoder that let garbage through.
The fast part runs in the default set; the long part (tens of thousands of frames) is slow.
"""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import numpy as np
import pytest
from fuzz_helpers import (
    ACT_DIM,
    BUNDLE,
    HIGH,
    LOW,
    OBS_DIM,
    SESSION_CHANGERS,
    Mutator,
    check_action,
    finish,
    judge,
    output_on_failure,
    send,
)
from wire_helpers import (
    PATIENCE_S,
    ScriptedRobot,
    endpoint_for,
    pendulum_spec,
    reap_processes,
    start_policyrt,
)

from policyrt.link import Link
from policyrt.protocol import (
    Encoder,
    MsgType,
    ObsFlag,
)
from policyrt.stream import open_session_link, stream_endpoint


@pytest.fixture(autouse=True)
def _reap():
    yield
    reap_processes()




def _robot_frames(rng: random.Random) -> bytes:
    enc = Encoder(obs_dim=OBS_DIM, act_dim=ACT_DIM, num_envs=2)
    enc._seq = rng.getrandbits(31)  # seqs all over the range, so an answer names its frame
    kind = rng.random()
    if kind < 0.8:
        obs = [rng.uniform(-0.2, 0.2) for _ in range(OBS_DIM)]
        return enc.obs(obs, rng.uniform(0, 1), flags=rng.choice([0, 0, 0, int(ObsFlag.RESET), int(ObsFlag.TERMINATED)]),
                       episode=rng.randrange(4), step=rng.randrange(100))
    if kind < 0.9:
        rows = np.zeros((2, OBS_DIM), np.float32)
        return enc.obs_batch(rows, np.zeros(2), np.zeros(2, np.uint32), np.zeros(2, np.uint32), np.zeros(2, np.uint32))
    return enc.control(rng.choice([MsgType.HEARTBEAT, MsgType.ESTOP, MsgType.CLEAR]))


def _fuzz_policyrt_run_lockstep(n: int, seed: int, tmp_path: Path) -> None:
    ep = endpoint_for("ipc")
    results = tmp_path / "run.json"
    robot = ScriptedRobot(ep, pendulum_spec(low=LOW, high=HIGH))
    output = tmp_path / "run.log"
    run = start_policyrt("run", str(BUNDLE), "--connect", ep, "--results", str(results), output=output)
    mutator = Mutator(seed, _robot_frames)
    dims = dict(obs_dim=OBS_DIM, act_dim=ACT_DIM)
    counted = answered = sent = 0
    probes: set[int] = set()  # OBS sent to resynchronise: their (late) answers are expected
    try:
        with output_on_failure(run, output):
            robot.accept()
            while sent < n:
                expected, dropped, batch_start = [], False, sent
                for _ in range(50):
                    fuzzed = mutator.next()
                    # Alone, right after a probe was answered (which proves everything before it
                    # was read): a dropped connection loses what it still held, both ways.
                    if fuzzed.oversize:
                        if sent == batch_start:
                            dropped = send(robot.link, fuzzed)
                            sent += 1
                        break
                    if len(fuzzed.parts) > 1:
                        counted += send(robot.link, fuzzed)
                    else:
                        msg = judge(fuzzed.parts[0], **dims)
                        if msg is not None and msg.type in SESSION_CHANGERS or not send(robot.link, fuzzed):
                            continue
                        if msg is None or msg.type is not MsgType.OBS:
                            counted += msg is None or msg.type not in (MsgType.HEARTBEAT, MsgType.ESTOP, MsgType.CLEAR)
                        else:
                            expected.append(msg.seq)
                    sent += 1
                if dropped:
                    act, seqs = robot.obs_until_answered(np.zeros(OBS_DIM, np.float32))
                    probes |= seqs
                    check_action(act)
                    continue
                probe = robot.obs(np.zeros(OBS_DIM, np.float32), 0.5)
                acks = []
                while True:
                    act = robot.recv()
                    check_action(act)
                    if act.ack == probe:
                        break
                    if act.ack not in probes:
                        acks.append(act.ack)
                assert acks == expected, "the controller answered a frame judged malformed, or missed a valid OBS"
                answered += len(expected)
            robot.send(robot.enc.control(MsgType.BYE))
    finally:
        robot.close()
    finish(run, output)
    errors = json.loads(results.read_text())["errors"]
    assert sum(errors.values()) == counted, errors
    assert answered > n // 4 and counted > n // 4  # both kinds were exercised


def test_fuzzed_robot_frames_against_policyrt_run_lockstep(tmp_path):
    _fuzz_policyrt_run_lockstep(3000, seed=12, tmp_path=tmp_path)


@pytest.mark.slow
def test_fuzzed_robot_frames_against_policyrt_run_lockstep_long(tmp_path):
    _fuzz_policyrt_run_lockstep(40_000, seed=1212, tmp_path=tmp_path)


# ---- robot-side frames against `policyrt run --mode realtime` ------------------------------------


def _fuzz_policyrt_run_realtime(n: int, seed: int, tmp_path: Path) -> None:
    ep = endpoint_for("ipc")
    results = tmp_path / "run.json"
    spec = pendulum_spec(low=LOW, high=HIGH)
    session = open_session_link(ep, bind=True)
    stream = Link(stream_endpoint(ep), bind=True, send_timeout_ms=0)  # not conflated: every ACT is seen
    for link in (session, stream):
        link.obs_dim, link.act_dim = OBS_DIM, ACT_DIM
    enc = Encoder(obs_dim=OBS_DIM, act_dim=ACT_DIM)
    output = tmp_path / "run.log"
    run = start_policyrt("run", str(BUNDLE), "--connect", ep, "--mode", "realtime", "--rate", "200",
                         "--results", str(results), output=output)
    mutator = Mutator(seed, _robot_frames)
    dims = dict(obs_dim=OBS_DIM, act_dim=ACT_DIM)
    valid_obs: set[int] = set()
    acts = session_counted = sent = 0

    def serve_session() -> None:  # a HELLO (first, or a retry after silence) gets the SPEC
        while (msg := session.recv(0)) is not None:
            if msg.type is MsgType.HELLO:
                session.send(enc.spec(spec, ack=msg.seq))

    def take_acts(until_acks: set[int], polls: int = 0) -> bool:
        """Check the ACTs that came; with `polls`, wait that many 50 ms polls for one acking
        `until_acks`. True when one did."""
        nonlocal acts
        while True:
            serve_session()
            act = stream.recv(0.05 if polls else 0)
            if act is None:
                polls -= 1
                if polls <= 0:
                    return False
                continue
            check_action(act)
            assert act.ack in valid_obs, f"an ACT answers seq {act.ack}, which was no valid OBS"
            acts += 1
            if act.ack in until_acks:
                return True

    def sync() -> None:  # a valid OBS, then its answer: the controller is alive and caught up
        seqs: set[int] = set()
        for _ in range(int(PATIENCE_S)):  # again each second: after a dropped connection it may be lost
            if stream.send(enc.obs(np.zeros(OBS_DIM, np.float32), 0.5)):
                valid_obs.add(enc.last_seq)
                seqs.add(enc.last_seq)
            if take_acts(seqs, polls=20):
                return
        raise AssertionError(f"no ACT answered any of the valid OBS {sorted(seqs)}")

    try:
        with output_on_failure(run, output):
            hello = session.recv(PATIENCE_S)
            assert hello is not None and hello.type is MsgType.HELLO
            session.send(enc.spec(spec, ack=hello.seq))
            sync()
            while sent < n:
                batch_start = sent
                for _ in range(40):
                    fuzzed = mutator.next()
                    if fuzzed.oversize:  # on the stream, alone after a sync: the controller reconnects
                        if sent == batch_start:
                            send(stream, fuzzed)
                            sent += 1
                        break
                    on_session = mutator.rng.random() < 0.5
                    link = session if on_session else stream
                    if len(fuzzed.parts) > 1:
                        session_counted += send(link, fuzzed) and on_session
                        # ZMQ_CONFLATE keeps only a message's last frame, seen as a frame of its own
                        last = judge(fuzzed.parts[-1], **dims)
                        if not on_session and last is not None and last.type is MsgType.OBS:
                            valid_obs.add(last.seq)
                    else:
                        msg = judge(fuzzed.parts[0], **dims)
                        if msg is not None and msg.type in SESSION_CHANGERS or not send(link, fuzzed):
                            continue
                        if on_session:
                            session_counted += msg is None or msg.type not in (MsgType.HEARTBEAT, MsgType.ESTOP,
                                                                              MsgType.CLEAR)
                        elif msg is not None and msg.type is MsgType.OBS:
                            valid_obs.add(msg.seq)
                    sent += 1
                    take_acts(set())
                sync()
            run.send_signal(signal.SIGINT)
    finally:
        session.close()
        stream.close()
    finish(run, output)
    counters = json.loads(results.read_text())["counters"]
    # every frame on the reliable session link was judged; the stream link conflates (some are
    # replaced by a newer frame before the controller reads them), so at least those
    assert sum(counters["rejected"].values()) >= session_counted > n // 4, counters
    assert acts > 0


def test_fuzzed_robot_frames_against_policyrt_run_realtime(tmp_path):
    _fuzz_policyrt_run_realtime(2000, seed=21, tmp_path=tmp_path)


@pytest.mark.slow
def test_fuzzed_robot_frames_against_policyrt_run_realtime_long(tmp_path):
    _fuzz_policyrt_run_realtime(20_000, seed=2121, tmp_path=tmp_path)
