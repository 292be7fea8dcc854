"""Fuzzing controller-side frames (mutated ACTs, multipart, oversize, control messages) against a real
`policyrt sim serve` process, with the counts asserted: 0 crashes, 0 hangs, every rejected frame
counted, every applied action within the announced bounds (clamped and counted otherwise), never a
non-finite value sent back. The generator and judge are tests/fuzz_helpers.py's (see
tests/test_fuzz_wire.py for the robot-side half). The long part is slow.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from fuzz_helpers import (
    ACT_DIM,
    DONE,
    EXTREMES,
    HIGH,
    LOW,
    OBS_DIM,
    SESSION_CHANGERS,
    Mutator,
    finish,
    judge,
    output_on_failure,
    send,
)
from wire_helpers import (
    RawController,
    endpoint_for,
    reap_processes,
    start_sim_server,
)

from policyrt.protocol import (
    ActFlag,
    Encoder,
    MsgType,
    decode,
)


@pytest.fixture(autouse=True)
def _reap():
    yield
    reap_processes()


def _fuzz_sim_serve(n: int, seed: int, tmp_path: Path) -> None:
    ep = endpoint_for("ipc")
    results = tmp_path / "serve.json"
    output = tmp_path / "serve.log"
    server = start_sim_server(ep, "--env-arg", "max_episode_steps=30", results=results, output=output)
    ctl = RawController(ep, act_dim=ACT_DIM)
    pending: dict = {}  # the OBS waiting for its answer

    def act_frames(rng: random.Random) -> bytes:
        enc = Encoder(act_dim=ACT_DIM)
        enc._seq = rng.getrandbits(31)
        action = rng.choice([rng.uniform(-3, 3), rng.uniform(-50, 50), rng.choice(EXTREMES)])
        return enc.act([action], ack=pending["obs"].seq if rng.random() < 0.7 else rng.getrandbits(32),
                       flags=rng.choice([0, 0, 0, 1]))

    mutator = Mutator(seed, act_frames)
    dims = dict(obs_dim=OBS_DIM, act_dim=ACT_DIM)
    counted = clamped = applied = sent = retries = 0
    estopped = False  # an answer flagged ESTOP latches the robot's e-stop: the safe action from then on
    try:
        with output_on_failure(server, output):
            ctl.hello()
            pending["obs"] = ctl.recv()
            while sent < n:
                obs = pending["obs"]
                answer, batch_start = None, sent
                while answer is None and sent < n:
                    fuzzed = mutator.next()
                    sent += 1
                    if fuzzed.oversize:  # the server drops the connection; the DEALER reconnects
                        if sent - 1 > batch_start:  # only first: the drop would lose what it still held
                            continue
                        send(ctl.link, fuzzed)
                        break
                    if len(fuzzed.parts) > 1:
                        counted += send(ctl.link, fuzzed)
                        continue
                    msg = judge(fuzzed.parts[0], **dims)
                    if msg is not None and msg.type in SESSION_CHANGERS | {MsgType.ESTOP, MsgType.CLEAR}:
                        continue
                    if not send(ctl.link, fuzzed):
                        continue
                    if msg is not None and msg.type is MsgType.ACT and msg.ack == obs.seq:
                        answer = msg
                    elif msg is None or msg.type is not MsgType.HEARTBEAT:
                        counted += 1  # malformed, stale, or a valid type the robot cannot use
                if answer is None:  # answer it ourselves (again, after a dropped connection)
                    answer = decode(bytes(ctl.enc.act([0.0], ack=obs.seq)), act_dim=ACT_DIM)
                    ctl.send(ctl.enc.act([0.0], ack=obs.seq))
                    nxt = ctl.link.recv(1.0)
                    while nxt is None:
                        retries += 1
                        ctl.send(ctl.enc.act([0.0], ack=obs.seq))
                        nxt = ctl.link.recv(1.0)
                else:
                    nxt = ctl.recv()
                estopped |= bool(answer.flags & ActFlag.ESTOP)
                if not obs.flags & DONE:  # an answer to a terminal OBS is ignored: no step
                    applied += 1
                    clamped += not estopped and not LOW <= answer.values[0] <= HIGH
                # one answer, one new observation: nothing was stepped on a malformed frame
                assert nxt.type is MsgType.OBS and nxt.seq == obs.seq + 1, nxt
                pending["obs"] = nxt._replace(values=nxt.values.copy())
            ctl.send(ctl.enc.control(MsgType.BYE))
    finally:
        ctl.close()
    finish(server, output)
    report = json.loads(results.read_text())
    assert report["stop_reason"] == "controller_left"
    assert report["steps"] == applied and report["clamped_actions"] == clamped > 0
    assert counted <= sum(report["errors"].values()) <= counted + retries, report["errors"]
    assert counted > n // 4


def test_fuzzed_controller_frames_against_policyrt_sim_serve(tmp_path):
    _fuzz_sim_serve(3000, seed=5, tmp_path=tmp_path)


@pytest.mark.slow
def test_fuzzed_controller_frames_against_policyrt_sim_serve_long(tmp_path):
    _fuzz_sim_serve(20_000, seed=555, tmp_path=tmp_path)
