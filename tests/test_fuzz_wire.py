"""Fuzzing the wire both ways against the real commands in their own processes, with the counts
asserted: robot-side frames against `policyrt run` (lockstep and real time), controller-side
frames against `policyrt sim serve`. Every case: 0 crashes, 0 hangs (the process answers a final
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

import contextlib
import json
import random
import signal
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zmq
from wire_helpers import (
    PATIENCE_S,
    RawController,
    ScriptedRobot,
    endpoint_for,
    pendulum_spec,
    reap_processes,
    start_policyrt,
    start_sim_server,
)

from policyrt.link import MAX_MESSAGE_BYTES, Link
from policyrt.protocol import (
    HEADER,
    HEADER_SIZE,
    MAX_FRAME_BYTES,
    ActFlag,
    Encoder,
    MsgType,
    ObsFlag,
    ProtocolError,
    decode,
)
from policyrt.stream import open_session_link, stream_endpoint

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "inverted-pendulum-xlstm.policy"
OBS_DIM, ACT_DIM, LOW, HIGH = 4, 1, -3.0, 3.0
DONE = int(ObsFlag.TERMINATED | ObsFlag.TRUNCATED)
EXTREMES = (float("nan"), float("inf"), float("-inf"), 1e38, -1e38, 3.4e38, -3.4e38, 1e-45, 0.0)
# Valid frames that would end or restart the session on purpose (not what a fuzzer tests).
SESSION_CHANGERS = {MsgType.BYE, MsgType.HELLO, MsgType.SPEC}


@pytest.fixture(autouse=True)
def _reap():
    yield
    reap_processes()


# ---- the generator -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Fuzzed:
    parts: tuple[bytes, ...]  # one frame, or the frames of one multipart message

    @property
    def oversize(self) -> bool:  # libzmq drops the connection instead of delivering it
        return any(len(p) > MAX_MESSAGE_BYTES for p in self.parts)


class Mutator:
    """Seeded mutations of valid frames from `base()` (a function of the Random)."""

    def __init__(self, seed: int, base):
        self.rng, self.base = random.Random(seed), base
        self._mutations = [
            self._as_is, self._bit_flips, self._truncate, self._extend, self._random_bytes,
            self._extreme_value, self._header_field, self._seq_zero,
        ]

    def frame(self) -> bytes:
        return bytes(self.rng.choice(self._mutations)(bytearray(self.base(self.rng))))

    def next(self) -> Fuzzed:
        roll = self.rng.random()
        if roll < 0.03:
            return Fuzzed(tuple(self.frame() for _ in range(self.rng.randint(2, 4))))
        if roll < 0.035:
            size = self.rng.choice([MAX_FRAME_BYTES + 1, MAX_MESSAGE_BYTES + 1, 4 * MAX_MESSAGE_BYTES])
            return Fuzzed((self.frame()[:HEADER_SIZE].ljust(size, b"\0"),))
        return Fuzzed((self.frame(),))

    def _as_is(self, f):
        return f

    def _bit_flips(self, f):
        for _ in range(self.rng.randint(1, 4)):
            bit = self.rng.randrange(8 * len(f))
            f[bit // 8] ^= 1 << (bit % 8)
        return f

    def _truncate(self, f):
        return f[: self.rng.randrange(len(f))]

    def _extend(self, f):
        return f + self.rng.randbytes(self.rng.randint(1, 64))

    def _random_bytes(self, f):
        return bytearray(self.rng.randbytes(self.rng.randint(0, 200)))

    def _extreme_value(self, f):
        if len(f) >= HEADER_SIZE + 4:
            at = HEADER_SIZE + 4 * self.rng.randrange((len(f) - HEADER_SIZE) // 4)
            struct.pack_into("<f", f, at, self.rng.choice(EXTREMES))
        return f

    def _header_field(self, f):
        # magic, version, type, flags, seq, ack, timestamp, episode, step, payload_len, reserved
        fields = list(HEADER.unpack_from(f))
        i = self.rng.randrange(1, len(fields))
        width = (8, 8, 16, 32, 32, 64, 32, 32, 32, 32)[i - 1]
        fields[i] = self.rng.choice([0, 1, (1 << width) - 1, self.rng.getrandbits(width), fields[i] + 1]) % (1 << width)
        HEADER.pack_into(f, 0, *fields)
        return f

    def _seq_zero(self, f):
        struct.pack_into("<I", f, 8, 0)
        return f


@contextlib.contextmanager
def output_on_failure(proc, output: Path):
    """A failed check kills `proc` and fails with the end of its output (why did it stop answering?).
    The output goes to a file: the fuzzed process logs more than a pipe holds."""
    try:
        yield
    except AssertionError as exc:
        proc.kill()
        proc.wait(PATIENCE_S)
        raise AssertionError(f"{exc}\n--- process output ---\n{output.read_text()[-6000:]}") from None


def finish(proc, output: Path) -> str:
    """Wait for the process to exit 0 and return its output."""
    code = proc.wait(PATIENCE_S)
    text = output.read_text()
    assert code == 0, text[-6000:]
    return text


def send(link, fuzzed: Fuzzed) -> bool:
    """Send the frame or multipart message; False when the socket could not take it (no peer at
    the moment, e.g. right after a dropped connection): then it was not sent and is not counted."""
    try:
        link.sock.send_multipart(fuzzed.parts)
        return True
    except zmq.Again:
        return False


def judge(frame: bytes, **dims):
    """The decoded message, or None for a frame the receiver must reject."""
    if len(frame) > MAX_FRAME_BYTES:
        return None
    try:
        return decode(frame, **dims)
    except ProtocolError:
        return None


def _check_action(act) -> None:
    assert act.type is MsgType.ACT
    assert np.isfinite(act.values).all() and ((act.values >= LOW) & (act.values <= HIGH)).all(), act


# ---- robot-side frames against `policyrt run`, lockstep ------------------------------------------


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
                    _check_action(act)
                    continue
                probe = robot.obs(np.zeros(OBS_DIM, np.float32), 0.5)
                acks = []
                while True:
                    act = robot.recv()
                    _check_action(act)
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
            _check_action(act)
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


# ---- controller-side frames against `policyrt sim serve` -------------------------------------------


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
