"""Hostile input against the real-time controller: 10,000 malformed frames on the session link,
property-based malformed frames on the observation stream. Real sockets, the controller in a
thread; every rejected frame must be counted under the kind `decode` gives it, the loop must keep
running, and answers that are due still go out (the fallback while no valid observation is fresh).
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from realtime_helpers import RealtimeRobot, linear_session, run_in_thread, spec, wait_until
from wire_helpers import PATIENCE_S, endpoint_for

from policyrt.controllers.realtime_loop import RealtimeController
from policyrt.controllers.settings import RealtimeConfig
from policyrt.protocol import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_FRAME_BYTES,
    VERSION,
    ActFlag,
    Encoder,
    MsgType,
    ObsFlag,
    ProtocolError,
    decode,
)

OBS_DIM, ACT_DIM = 4, 1
FALLBACK = int(ActFlag.FALLBACK)


def expected_kind(frame: bytes) -> str | None:
    """The kind the controller must count for this frame on its session link (None: valid)."""
    if len(frame) > MAX_FRAME_BYTES:
        return "length"
    try:
        msg = decode(frame, obs_dim=OBS_DIM, act_dim=ACT_DIM)
    except ProtocolError as exc:
        return exc.kind
    if msg.type in (MsgType.OBS, MsgType.ACT, MsgType.OBS_BATCH, MsgType.ACT_BATCH, MsgType.HELLO):
        return "unexpected"
    return None  # SPEC/ESTOP/CLEAR/HEARTBEAT/BYE would change the session: never sent here


def header(mtype=MsgType.OBS, flags=0, plen=None, payload=b"", magic=MAGIC, version=VERSION) -> bytes:
    plen = len(payload) if plen is None else plen
    return HEADER.pack(magic, version, int(mtype), flags, 1, 0, 0, 0, 0, plen, 0) + payload


def floats(*values) -> bytes:
    return np.asarray(values, "<f4").tobytes()


def malformed_frames(n: int, seed: int = 0) -> list[bytes]:
    """n frames, every one invalid, across every rejection kind."""
    rng = np.random.default_rng(seed)
    good_obs = floats(0.1, 0.2, 0.3, 0.4, 1.0)
    makers = [
        lambda: bytes(rng.integers(0, 256, int(rng.integers(0, HEADER_SIZE)), dtype=np.uint8)),  # truncated
        lambda: header(payload=good_obs)[
            : HEADER_SIZE + int(rng.integers(0, len(good_obs)))
        ],  # truncated payload
        lambda: header(payload=good_obs) + b"\0" * int(rng.integers(1, 64)),  # length
        lambda: header(payload=good_obs, magic=bytes(rng.integers(0, 256, 4, dtype=np.uint8))),  # magic
        lambda: header(payload=good_obs, version=int(rng.integers(2, 256))),  # version
        lambda: header(mtype=int(rng.choice([0, *range(11, 256)])), payload=good_obs),  # type
        lambda: header(flags=int(rng.integers(8, 1 << 16)), payload=good_obs),  # flags
        lambda: header(payload=floats(*rng.normal(size=int(rng.choice([0, 1, 2, 3, 5, 9])) + 1))),  # dims
        lambda: header(payload=floats(0.1, np.nan, 0.3, 0.4, 1.0)),  # nonfinite
        lambda: header(payload=floats(0.1, 0.2, 0.3, 0.4, np.inf)),  # nonfinite reward
        lambda: header(mtype=MsgType.HELLO, payload=b"x"),  # length (control with payload)
        lambda: header(mtype=MsgType.SPEC, payload=floats(4.5, 1, 0)),  # spec
        lambda: header(payload=good_obs),  # a valid OBS on the session link: unexpected
        lambda: header(mtype=MsgType.ACT, payload=floats(0.5)),  # an ACT to the controller: unexpected
        lambda: bytes(rng.integers(0, 256, int(rng.integers(40, 200)), dtype=np.uint8)),  # garbage
    ]
    frames = []
    while len(frames) < n:
        frame = makers[int(rng.integers(0, len(makers)))]()
        if expected_kind(frame) is not None:
            frames.append(frame)
    # A few oversized frames (beyond the 64 KiB receive buffer): rejected as `length`.
    for i in range(0, n, n // 20 or 1):
        frames[i] = header(payload=b"\0" * (MAX_FRAME_BYTES + 4))
    return frames


@pytest.fixture
def running():
    ep = endpoint_for("ipc")
    robot = RealtimeRobot(ep, spec())
    config = RealtimeConfig(rate_hz=500.0, stale_after_s=0.02, fallback="zero", deadline_s=PATIENCE_S)
    controller = RealtimeController(linear_session(), [ep], config)
    thread, box = run_in_thread(controller)
    robot.accept()
    seq = robot.obs([0.5, 0, 0, 0], flags=ObsFlag.RESET)
    assert robot.act_answering(seq).values.tolist() == [0.5]
    yield robot, controller
    controller.request_stop()
    thread.join(PATIENCE_S)
    robot.close()
    assert not thread.is_alive() and "error" not in box, box.get("error")


def kinds_of(frames) -> dict[str, int]:
    counts: dict[str, int] = {}
    for frame in frames:
        kind = expected_kind(frame)
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def test_ten_thousand_malformed_frames_are_each_rejected_and_counted(running):
    robot, controller = running
    frames = malformed_frames(10_000)
    expected = kinds_of(frames)
    assert len(expected) >= 10  # the generator really covers the kinds
    before = dict(controller.counters["rejected"])
    for frame in frames:
        while not robot.session.send(frame):  # the queue towards the controller is full: let it drain
            time.sleep(0.001)
    wait_until(
        lambda: controller.counters["rejected_total"] - sum(before.values()) >= len(frames),
        "every malformed frame rejected",
    )
    after = controller.counters["rejected"]
    assert {k: after.get(k, 0) - before.get(k, 0) for k in after if after[k] != before.get(k, 0)} == expected
    # The loop is alive and still answers: no valid observation came during the flood, so the
    # answers due went out as the fallback; a fresh one is answered by the policy again.
    act = robot.next_act()
    assert act.flags == FALLBACK and np.isfinite(act.values).all()
    seq = robot.obs([0.25, 0, 0, 0], step=1)
    act = robot.act_answering(seq)
    assert act.values.tolist() == [0.25] and act.flags == 0
    assert controller.counters["estops"] == 0 and controller.counters["robots_connected"] == 1


def _stream_frames():
    """Frames for the observation stream: valid headers around hostile payloads, hostile headers,
    and plain bytes."""
    finite = st.floats(-1e6, 1e6, width=32)
    any_float = st.floats(width=32, allow_nan=True, allow_infinity=True)
    payload = st.lists(any_float, min_size=0, max_size=12).map(lambda v: floats(*v) if v else b"")
    return st.one_of(
        st.binary(max_size=120),
        st.builds(lambda p: header(payload=p), payload),
        st.builds(
            lambda t, f, p: header(mtype=t, flags=f, payload=p),
            st.integers(0, 255),
            st.integers(0, 0xFFFF),
            st.lists(finite, max_size=6).map(lambda v: floats(*v) if v else b""),
        ),
        st.builds(
            lambda p, cut: header(payload=p)[: max(0, len(header(payload=p)) - cut)],
            payload,
            st.integers(1, 30),
        ),
    ).filter(lambda f: _stream_kind(f) is not None)


def _stream_kind(frame: bytes) -> str | None:
    if len(frame) > MAX_FRAME_BYTES:
        return "length"
    try:
        msg = decode(frame, obs_dim=OBS_DIM, act_dim=ACT_DIM)
    except ProtocolError as exc:
        return exc.kind
    return None if msg.type is MsgType.OBS else "unexpected"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frame=_stream_frames())
def test_malformed_stream_frames_are_rejected_one_by_one(running_module, frame):
    robot, controller = running_module
    kind = _stream_kind(frame)
    before = controller.counters["rejected"].get(kind, 0)
    assert robot.stream.send(frame)
    wait_until(lambda: controller.counters["rejected"].get(kind, 0) == before + 1, f"the {kind} rejection")


@pytest.fixture(scope="module")
def running_module():
    ep = endpoint_for("ipc")
    robot = RealtimeRobot(ep, spec())
    config = RealtimeConfig(rate_hz=500.0, stale_after_s=PATIENCE_S, deadline_s=PATIENCE_S)
    controller = RealtimeController(linear_session(), [ep], config)
    thread, box = run_in_thread(controller)
    robot.accept()
    seq = robot.obs([0.5, 0, 0, 0], flags=ObsFlag.RESET)
    robot.act_answering(seq)
    yield robot, controller
    # After the whole property run the loop still answers a valid observation with the policy.
    seq = robot.obs([0.125, 0, 0, 0], step=1)
    assert robot.act_answering(seq).values.tolist() == [0.125]
    controller.request_stop()
    thread.join(PATIENCE_S)
    robot.close()
    assert not thread.is_alive() and "error" not in box, box.get("error")


def test_the_generator_never_produces_a_valid_frame():
    for frame in malformed_frames(2000, seed=1):
        assert expected_kind(frame) is not None
    enc = Encoder(obs_dim=OBS_DIM, act_dim=ACT_DIM)
    valid = bytes(enc.obs(np.zeros(OBS_DIM, np.float32), 0.0))
    assert _stream_kind(valid) is None and struct.unpack_from("<4s", valid)[0] == MAGIC


def test_every_estop_latch_gets_a_flight_recorder_dump_of_its_own(tmp_path):
    """A deadline burst's dump still pending when the e-stop latches is written at once, and the
    e-stop gets its own file; a second latch within the once-per-half-ring limit is dumped later,
    never dropped (the operator's event must be in a file)."""
    from policyrt.controllers.core import RunInfo, TickRecord
    from policyrt.controllers.flight_recorder import FlightRecorder, load_dump
    from policyrt.controllers.safety import ESTOP, SafetyChain

    capacity, post = 64, 4
    recorder = FlightRecorder(tmp_path, capacity=capacity, post_ticks=post, miss_burst=3, miss_window=10)
    low, high = np.full((1, ACT_DIM), -1, np.float32), np.full((1, ACT_DIM), 1, np.float32)
    chain = SafetyChain(low[0], high[0], batch=1)
    record = TickRecord(chain, OBS_DIM, ("tick",))
    run = RunInfo(
        rate_hz=100.0, robots=("ipc://robot",), batch=1, obs_dim=OBS_DIM, act_dim=ACT_DIM, stages=("tick",),
        action_low=low, action_high=high, counters=dict, fault_events=lambda: np.zeros(0),
        robot_names=list,
    )
    recorder.on_start(run, record)
    latches = {5: True, 20: True}  # the second latch comes well within half a ring of the first
    for tick in range(80):
        record.tick = tick
        record.deadline_missed = tick in (1, 2, 3)  # a burst: its dump is due at tick 3 + post
        record.fault_onsets = ESTOP if latches.get(tick) else 0
        recorder.on_tick(record)
    recorder.on_close()
    dumps = sorted((meta["tick"], meta["reason"], arrays["tick"]) for meta, arrays in map(load_dump, recorder.dumps))
    assert [(tick, reason) for tick, reason, _ in dumps] == [
        (5, "deadline_burst"), (5 + post, "estop"), (5 + post + capacity // 2, "estop")
    ]
    assert 5 in dumps[1][2] and 20 in dumps[2][2]  # each e-stop file holds the latch it is for


PENDULUM = Path(__file__).resolve().parents[1] / "bundles" / "inverted-pendulum-xlstm.policy"


@pytest.mark.parametrize("factor", [0, 10], ids=["guard off", "guard on"])
def test_a_huge_observation_is_one_fallback_and_in_the_counters_and_the_flight_recorder(tmp_path, factor):
    """3e38 from a real robot link into the shipped pendulum bundle (issue 12): with the guard
    off its action is non-finite, the slot's state is reset (state_resets, the recorder's
    state_reset row) and the next observation gets the policy's action again; with the guard on
    it is an obs_range fallback and the state never turns non-finite."""
    import policyrt
    from policyrt.controllers.flight_recorder import FlightRecorder, load_dump

    pytest.importorskip("onnxruntime")
    endpoint = endpoint_for("ipc")
    robot = RealtimeRobot(endpoint, spec())
    recorder = FlightRecorder(tmp_path, capacity=64, post_ticks=2)
    config = RealtimeConfig(rate_hz=200.0, stale_after_s=PATIENCE_S, deadline_s=PATIENCE_S, fallback="zero",
                            obs_range_factor=factor)
    controller = RealtimeController(policyrt.load(PENDULUM), [endpoint], config, recorder=recorder)
    thread, box = run_in_thread(controller)
    try:
        robot.accept()
        seq = robot.obs([0.01, 0, 0, 0], flags=ObsFlag.RESET)
        assert robot.act_answering(seq).flags == 0
        seq = robot.obs([3e38, 0, 0, 0], step=1)
        assert robot.act_answering(seq).flags == FALLBACK
        seq = robot.obs([0.01, 0, 0, 0], step=2)
        act = robot.act_answering(seq)
        assert act.flags == 0 and np.isfinite(act.values).all(), "the policy's own action again"
        wait_until(lambda: recorder.dumps, "the flight recorder dump")
    finally:
        controller.request_stop()
        thread.join(PATIENCE_S)
        robot.close()
    counters = box["result"].counters
    meta, arrays = load_dump(recorder.dumps[0])
    if factor:
        assert counters["fallbacks"]["obs_range"] >= 1 and counters["state_resets"] == 0
        stepped = arrays["active"][:, 0]  # (a tick with no robot records NaN)
        assert meta["reason"] == "obs_range" and stepped.any() and np.isfinite(arrays["raw_action"][stepped]).all()
    else:
        # The loop repeats the huge observation until the next one arrives (sample-and-hold), so
        # there may be a second such tick: each one is reset, and only those.
        assert counters["fallbacks"]["nonfinite"] == counters["state_resets"] >= 1
        assert meta["reason"] == "nonfinite" and meta["counters"]["state_resets"] >= 1
        reset_rows = arrays["state_reset"][:, 0]
        stepped_nonfinite = arrays["active"][:, 0] & ~np.isfinite(arrays["raw_action"][:, 0]).all(axis=1)
        assert np.array_equal(reset_rows, stepped_nonfinite)  # (a tick with no robot records NaN)
        assert reset_rows.any() and not reset_rows[-1]
