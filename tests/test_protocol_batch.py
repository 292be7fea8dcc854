"""The batched extension of the wire protocol (OBS_BATCH / ACT_BATCH, SPEC num_envs): round trips,
rejections by kind, fuzzing, and the examples in docs/PROTOCOL.md section 10 byte for byte."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wire_helpers import frame

from policyrt.protocol import (
    ActFlag,
    Encoder,
    MsgType,
    ProtocolError,
    SlotFlag,
    batch_frame_bytes,
    decode,
)
from policyrt.spec import Spec

DOC = Path(__file__).resolve().parents[1] / "docs" / "PROTOCOL.md"


def obs_batch_payload(flags, episodes, steps, rows) -> bytes:
    return (np.asarray([flags, episodes, steps], "<u4").tobytes() + np.asarray(rows, "<f4").tobytes())


def kind_of(data, **dims) -> str:
    with pytest.raises(ProtocolError) as info:
        decode(data, **dims)
    return info.value.kind


def test_obs_batch_round_trip_keeps_every_slot_field():
    enc = Encoder(obs_dim=2, act_dim=1, num_envs=3)
    obs = np.array([[0.1, 0.2], [0.3, 0.4], [0.0, 0.0]], np.float32)
    raw = enc.obs_batch(obs, [0.0, 1.0, 0.0], [SlotFlag.RESET, SlotFlag.TERMINATED, SlotFlag.IDLE], [4, 7, 0], [0, 9, 0])
    msg = decode(bytes(raw), obs_dim=2, act_dim=1, num_envs=3)
    assert msg.type is MsgType.OBS_BATCH and msg.flags == 0 and msg.seq == 1
    np.testing.assert_array_equal(msg.obs, obs)
    np.testing.assert_array_equal(msg.rewards, [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(msg.slots, [[1, 2, 8], [4, 7, 0], [0, 9, 0]])
    assert len(raw) == batch_frame_bytes(MsgType.OBS_BATCH, 3, 2) == 40 + 3 * (12 + 12)


def test_act_batch_round_trip_carries_the_answered_seq_and_row_flags():
    enc = Encoder(act_dim=2, num_envs=2)
    raw = enc.act_batch([[0.5, -1.0], [0.0, 0.0]], [0, ActFlag.FALLBACK | ActFlag.ESTOP], ack=41)
    msg = decode(bytes(raw), act_dim=2, num_envs=2)
    assert (msg.type, msg.ack) == (MsgType.ACT_BATCH, 41)
    np.testing.assert_array_equal(msg.values, [[0.5, -1.0], [0.0, 0.0]])
    np.testing.assert_array_equal(msg.slots, [[0, 3]])
    assert len(raw) == batch_frame_bytes(MsgType.ACT_BATCH, 2, 2)


def test_spec_announces_num_envs_and_a_single_environment_spec_is_unchanged():
    one = Spec(obs_dim=4, act_dim=1, robot="r")
    assert b"num_envs" not in Encoder().spec(one)  # byte-identical to a version-1 SPEC
    assert decode(Encoder().spec(one)).spec.num_envs == 1
    many = decode(Encoder().spec(Spec(obs_dim=4, act_dim=1, robot="r", num_envs=16))).spec
    assert many.num_envs == 16 and "num_envs" not in many.extra


@pytest.mark.parametrize("bad", [0, -1, 65536, 2.5, "4", True, None])
def test_spec_refuses_a_num_envs_that_is_not_a_count(bad):
    text = json.dumps({"num_envs": bad}).encode()
    assert kind_of(frame(MsgType.SPEC, np.array([4, 1, 0, -1, 1], "<f4").tobytes() + text)) == "spec"


def test_batched_frames_need_the_session_dims():
    raw = bytes(Encoder(obs_dim=2, act_dim=1, num_envs=2).obs_batch(np.zeros((2, 2)), [0, 0], [0, 0], [0, 0], [0, 0]))
    assert kind_of(raw) == "unexpected"
    assert decode(raw, obs_dim=2).values.shape == (2, 3)  # the slot count may come from the size alone


def test_slot_count_is_checked_against_num_envs():
    raw = bytes(Encoder(obs_dim=2, num_envs=2).obs_batch(np.zeros((2, 2)), [0, 0], [0, 0], [0, 0], [0, 0]))
    assert kind_of(raw, obs_dim=2, num_envs=3) == "dims"
    act = bytes(Encoder(act_dim=1, num_envs=4).act_batch(np.zeros((4, 1)), np.zeros(4), ack=1))
    assert kind_of(act, act_dim=1, num_envs=2) == "dims"


def test_partial_slots_and_empty_batches_are_wrong_length():
    good = obs_batch_payload([0, 0], [0, 0], [0, 0], np.zeros((2, 3)))
    assert kind_of(frame(MsgType.OBS_BATCH, good[:-4]), obs_dim=2) == "length"
    assert kind_of(frame(MsgType.OBS_BATCH, b""), obs_dim=2) == "length"
    assert decode(frame(MsgType.ACT_BATCH, b"\0" * 12), act_dim=2).values.shape == (1, 2)  # one 12-byte slot
    assert kind_of(frame(MsgType.ACT_BATCH, b"\0" * 13), act_dim=2) == "length"


def test_header_flags_and_undefined_slot_flags_are_rejected():
    ok = obs_batch_payload([SlotFlag.IDLE, 0], [0, 0], [0, 0], np.zeros((2, 3)))
    assert decode(frame(MsgType.OBS_BATCH, ok), obs_dim=2).slots[0][0] == SlotFlag.IDLE
    assert kind_of(frame(MsgType.OBS_BATCH, ok, flags=1), obs_dim=2) == "flags"  # header flags stay 0
    bad = obs_batch_payload([0, 0x10], [0, 0], [0, 0], np.zeros((2, 3)))
    err = pytest.raises(ProtocolError, decode, frame(MsgType.OBS_BATCH, bad), obs_dim=2).value
    assert err.kind == "flags" and "slot 1" in err.detail
    act = np.array([0, 4], "<u4").tobytes() + np.zeros(2, "<f4").tobytes()  # 4 is no ACT bit
    assert kind_of(frame(MsgType.ACT_BATCH, act), act_dim=1) == "flags"


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_rows_are_rejected(bad):
    rows = np.zeros((2, 3))
    rows[1, 2] = bad  # a reward
    assert kind_of(frame(MsgType.OBS_BATCH, obs_batch_payload([0, 0], [0, 0], [0, 0], rows)), obs_dim=2) == "nonfinite"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([MsgType.OBS_BATCH, MsgType.ACT_BATCH]), st.sampled_from([None, 1, 2, 3]))
def test_random_batch_payloads_raise_only_protocol_errors(payload, mtype, num_envs):
    try:
        decode(frame(mtype, payload), obs_dim=2, act_dim=1, num_envs=num_envs)
    except ProtocolError:
        pass


# --- the document's examples (docs/PROTOCOL.md section 10) ------------------------------------


def doc_examples() -> list[bytes]:
    blocks = re.findall(r"```hexdump\n(.*?)```", DOC.read_text(), re.S)
    return [bytes.fromhex("".join(line[6:] for line in block.splitlines())) for block in blocks]


def test_protocol_md_batch_examples_decode_as_documented_and_match_the_encoder():
    obs_raw, act_raw = doc_examples()[2:4]
    obs = decode(obs_raw, obs_dim=2, act_dim=1, num_envs=2)
    assert (obs.type, obs.seq, obs.timestamp_ns) == (MsgType.OBS_BATCH, 9, 3_000_000_000)
    np.testing.assert_array_equal(obs.slots, [[SlotFlag.RESET, SlotFlag.TERMINATED], [3, 1], [0, 17]])
    np.testing.assert_array_equal(obs.values, [[0.25, -0.5, 0.0], [1.0, 2.0, 1.0]])
    act = decode(act_raw, obs_dim=2, act_dim=1, num_envs=2)
    assert (act.type, act.seq, act.ack, act.timestamp_ns) == (MsgType.ACT_BATCH, 8, 9, 3_000_500_000)
    np.testing.assert_array_equal(act.slots, [[0, ActFlag.FALLBACK]])
    np.testing.assert_array_equal(act.values, [[0.5], [0.0]])

    enc = Encoder(obs_dim=2, act_dim=1, num_envs=2)
    enc._seq = 8
    ours = bytearray(enc.obs_batch([[0.25, -0.5], [1.0, 2.0]], [0.0, 1.0], [1, 2], [3, 1], [0, 17]))
    struct.pack_into("<Q", ours, 16, 3_000_000_000)
    assert bytes(ours) == obs_raw
    enc._seq = 7
    ours = bytearray(enc.act_batch([[0.5], [0.0]], [0, 1], ack=9))
    struct.pack_into("<Q", ours, 16, 3_000_500_000)
    assert bytes(ours) == act_raw
