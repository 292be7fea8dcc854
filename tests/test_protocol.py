"""Wire protocol: round trips, one test per rejection kind, and the examples in docs/PROTOCOL.md decoded
byte for byte (random and corrupted bytes: tests/test_protocol_fuzz.py)."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest
from wire_helpers import floats, frame

from policyrt.protocol import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    VERSION,
    ActFlag,
    Encoder,
    MsgType,
    ObsFlag,
    ProtocolError,
    decode,
)
from policyrt.spec import Spec
from policyrt.stream import stream_endpoint

DOC = Path(__file__).resolve().parents[1] / "docs" / "PROTOCOL.md"


def pendulum_spec(**kw) -> Spec:
    base = dict(
        obs_dim=4,
        act_dim=1,
        control_rate_hz=25.0,
        action_low=np.array([-3.0], np.float32),
        action_high=np.array([3.0], np.float32),
        robot="InvertedPendulum-v5",
        obs_names=("x", "theta", "dx", "dtheta"),
        act_names=("slider",),
    )
    base.update(kw)
    return Spec(**base)


# --- round trips -------------------------------------------------------------------------------


def test_obs_round_trip_keeps_every_field():
    enc = Encoder(obs_dim=4)
    buf = enc.obs(np.array([0.1, -0.2, 0.3, -0.4]), 1.0, flags=ObsFlag.RESET, episode=3, step=0)
    msg = decode(bytes(buf), obs_dim=4)
    assert msg.type is MsgType.OBS
    assert msg.flags == ObsFlag.RESET and msg.seq == 1 and msg.ack == 0
    assert (msg.episode, msg.step) == (3, 0)
    np.testing.assert_array_equal(msg.obs, np.array([0.1, -0.2, 0.3, -0.4], np.float32))
    assert msg.reward == 1.0
    assert msg.timestamp_ns > 0


def test_act_round_trip_carries_the_answered_seq_and_flags():
    enc = Encoder(act_dim=2)
    buf = enc.act([0.5, -1.0], ack=41, flags=ActFlag.FALLBACK | ActFlag.ESTOP, episode=1, step=9)
    msg = decode(buf, act_dim=2)
    assert msg.type is MsgType.ACT and msg.ack == 41 and (msg.episode, msg.step) == (1, 9)
    assert msg.flags == ActFlag.FALLBACK | ActFlag.ESTOP
    np.testing.assert_array_equal(msg.values, [0.5, -1.0])


def test_spec_round_trip_with_names_and_infinite_bounds():
    spec = pendulum_spec(action_low=np.array([-np.inf], np.float32), extra={"firmware": "1.2"})
    msg = decode(Encoder().spec(spec, ack=1))
    got = msg.spec
    assert msg.type is MsgType.SPEC and msg.ack == 1
    assert (got.obs_dim, got.act_dim, got.control_rate_hz) == (4, 1, 25.0)
    assert got.action_low[0] == -np.inf and got.action_high[0] == 3.0
    assert got.robot == "InvertedPendulum-v5"
    assert got.obs_names == ("x", "theta", "dx", "dtheta") and got.act_names == ("slider",)
    assert got.extra == {"firmware": "1.2"}


def test_spec_without_rate_or_bounds_means_none_and_unbounded():
    got = decode(Encoder().spec(Spec(obs_dim=3, act_dim=2))).spec
    assert got.control_rate_hz is None
    low, high = got.bounds()
    assert np.all(np.isneginf(low)) and np.all(np.isposinf(high))


def test_spec_text_may_be_empty():
    payload = floats(4, 1, 0, -1, 1)
    assert decode(frame(MsgType.SPEC, payload)).spec.robot == ""


@pytest.mark.parametrize(
    "mtype", [MsgType.HELLO, MsgType.ESTOP, MsgType.CLEAR, MsgType.HEARTBEAT, MsgType.BYE]
)
def test_control_messages_round_trip_empty(mtype):
    msg = decode(Encoder().control(mtype, ack=5))
    assert msg.type is mtype and msg.ack == 5 and msg.values.size == 0


def test_control_refuses_types_with_payloads():
    with pytest.raises(ValueError):
        Encoder().control(MsgType.OBS)


def test_sequence_numbers_count_up_and_wrap_past_zero():
    enc = Encoder(act_dim=1)
    assert [decode(enc.act([0.0], ack=0)).seq for _ in range(3)] == [1, 2, 3]
    enc._seq = 2**32 - 2
    assert [decode(enc.act([0.0], ack=0)).seq for _ in range(3)] == [2**32 - 1, 1, 2]


def test_encoder_reuses_its_buffer_and_decoding_a_copy_is_stable():
    enc = Encoder(act_dim=1)
    first = enc.act([1.0], ack=1)
    kept = bytes(first)
    second = enc.act([2.0], ack=2)
    assert first is second  # preallocated: no new buffer per message
    assert decode(kept).values[0] == 1.0


def test_decode_accepts_memoryview_slices_of_a_larger_buffer():
    data = bytes(Encoder(obs_dim=2).obs([1.0, 2.0], 0.5))
    big = bytearray(1024)
    big[: len(data)] = data
    msg = decode(memoryview(big)[: len(data)], obs_dim=2)
    np.testing.assert_array_equal(msg.values, [1.0, 2.0, 0.5])


# --- every rejection kind ----------------------------------------------------------------------


def kind_of(data, **dims) -> str:
    with pytest.raises(ProtocolError) as info:
        decode(data, **dims)
    return info.value.kind


def test_shorter_than_header_is_truncated():
    assert kind_of(b"") == "truncated"
    assert kind_of(frame(MsgType.HELLO)[: HEADER_SIZE - 1]) == "truncated"


def test_payload_shorter_than_announced_is_truncated():
    good = bytes(Encoder(obs_dim=4).obs(np.zeros(4), 0.0))
    assert kind_of(good[:-1], obs_dim=4) == "truncated"


def test_bad_magic():
    assert kind_of(frame(MsgType.HELLO, magic=b"PLRX")) == "magic"


def test_wrong_version():
    assert kind_of(frame(MsgType.HELLO, version=VERSION + 1)) == "version"


def test_a_version_1_peer_is_refused_with_a_one_line_message_naming_both_versions():
    """Version 2 changed the terminal-observation rule: a version-1 HELLO (or SPEC, OBS, ...) is
    refused, never half-understood."""
    assert VERSION == 2
    with pytest.raises(ProtocolError) as exc:
        decode(frame(MsgType.HELLO, version=1))
    assert exc.value.kind == "version"
    assert "peer speaks protocol version 1, this side speaks 2: upgrade the peer" in exc.value.detail
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("code", [0, 11, 255])  # 9 and 10 are the batched extension's
def test_unknown_type(code):
    assert kind_of(frame(code)) == "type"


def test_undefined_flag_bits():
    assert kind_of(frame(MsgType.OBS, floats(0, 0), flags=0x0008)) == "flags"
    assert kind_of(frame(MsgType.ACT, floats(0), flags=0x0004)) == "flags"
    assert kind_of(frame(MsgType.HELLO, flags=ObsFlag.RESET)) == "flags"


def test_more_bytes_than_announced_is_wrong_length():
    assert kind_of(frame(MsgType.ACT, floats(1.0), plen=0)) == "length"
    assert kind_of(bytes(Encoder(act_dim=1).act([1.0], ack=1)) + b"\0") == "length"


def test_payload_on_an_empty_type_is_wrong_length():
    assert kind_of(frame(MsgType.HEARTBEAT, b"\0\0\0\0")) == "length"


def test_partial_float_is_wrong_length():
    assert kind_of(frame(MsgType.ACT, b"\0\0\0")) == "length"
    assert kind_of(frame(MsgType.OBS, b"")) == "length"  # not even the reward


def test_obs_and_act_sizes_are_checked_against_the_spec():
    obs = bytes(Encoder(obs_dim=3).obs(np.zeros(3), 0.0))
    assert kind_of(obs, obs_dim=4) == "dims"
    assert decode(obs).values.size == 4  # without a SPEC any size is fine
    act = bytes(Encoder(act_dim=2).act([0.0, 0.0], ack=1))
    assert kind_of(act, act_dim=1) == "dims"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_rejected(bad):
    assert kind_of(frame(MsgType.OBS, floats(0, bad, 0, 0, 1.0)), obs_dim=4) == "nonfinite"
    assert kind_of(frame(MsgType.OBS, floats(0, 0, 0, 0, bad)), obs_dim=4) == "nonfinite"  # reward
    assert kind_of(frame(MsgType.ACT, floats(bad)), act_dim=1) == "nonfinite"


@pytest.mark.parametrize("count", [1, 2, 3, 7, 8, 9, 16, 17, 33, 64, 257])
def test_finiteness_check_finds_any_bad_value_at_any_position_and_passes_extreme_finite_ones(count):
    enc = Encoder(act_dim=count)
    extreme = np.full(count, np.finfo(np.float32).max, np.float32)
    extreme[::2] *= -1  # a plain sum of these would overflow
    assert decode(enc.act(extreme, ack=1), act_dim=count).values.size == count
    for bad in (np.nan, np.inf, -np.inf):
        for i in {0, count // 2, count - 1}:
            action = extreme.copy()
            action[i] = bad
            assert kind_of(bytes(enc.act(action, ack=1)), act_dim=count) == "nonfinite"


@pytest.mark.parametrize(
    "payload",
    [
        floats(4),  # no room for act_dim and rate
        floats(0, 1, 0, -1, 1),  # obs_dim 0
        floats(4.5, 1, 0, -1, 1),  # fractional dim
        floats(4, np.nan, 0, -1, 1),
        floats(4, 1, -5, -1, 1),  # negative rate
        floats(4, 1, np.inf, -1, 1),
        floats(4, 2, 0, -1, 1),  # bounds for act_dim 2 missing
        floats(4, 1, 0, 1, -1),  # low > high
        floats(4, 1, 0, np.nan, 1),
        floats(4, 1, 0, -1, 1) + b"\xff\xfe",  # not UTF-8
        floats(4, 1, 0, -1, 1) + b"{not json",
        floats(4, 1, 0, -1, 1) + b"[1, 2]",  # not an object
        floats(4, 1, 0, -1, 1) + b'{"act_names": ["a", "b"]}',  # wrong count
        floats(4, 1, 0, -1, 1) + b'{"obs_names": "xyz"}',
        floats(4, 1, 0, -1, 1) + b'{"robot": 7}',
        # NaN and Infinity are not JSON (RFC 8259), though Python's json.loads takes them
        floats(4, 1, 0, -1, 1) + b'{"robot": "r", "gain": NaN}',
        floats(4, 1, 0, -1, 1) + b'{"limits": [Infinity, -Infinity]}',
        # data frames that could never be received: OBS of 20000 floats, OBS_BATCH of 4000 slots
        floats(20000, 1, 0, -1, 1),
        floats(4, 1, 0, -1, 1) + b'{"num_envs": 4000}',
    ],
)
def test_invalid_spec_content(payload):
    assert kind_of(frame(MsgType.SPEC, payload)) == "spec"


def test_the_largest_spec_whose_frames_fit_is_accepted_and_its_frames_fit_the_buffer():
    """MAX_FRAME_BYTES bounds every frame of every session a receiver accepts."""
    from policyrt.protocol import MAX_FRAME_BYTES, batch_frame_bytes

    slots = (MAX_FRAME_BYTES - HEADER_SIZE) // (4 * (3 + 4 + 1))  # obs_dim 4, act_dim 1
    msg = decode(frame(MsgType.SPEC, floats(4, 1, 0, -1, 1) + b'{"num_envs": %d}' % slots))
    assert msg.spec.num_envs == slots
    assert batch_frame_bytes(MsgType.OBS_BATCH, slots, 4) <= MAX_FRAME_BYTES
    assert kind_of(frame(MsgType.SPEC, floats(4, 1, 0, -1, 1) + b'{"num_envs": %d}' % (slots + 1))) == "spec"


def test_a_spec_is_never_encoded_with_nan_in_its_text():
    with pytest.raises(ValueError):
        Encoder().spec(pendulum_spec(extra={"gain": float("nan")}))


@pytest.mark.parametrize("mtype", [MsgType.OBS, MsgType.ACT, MsgType.HELLO, MsgType.SPEC])
def test_seq_0_is_refused_it_is_never_a_sequence_number(mtype):
    payload = {MsgType.OBS: floats(0, 0, 0, 0, 1), MsgType.ACT: floats(0.5)}.get(mtype, b"")
    if mtype is MsgType.SPEC:
        payload = floats(4, 1, 0, -1, 1)
    assert kind_of(frame(mtype, payload, seq=0), obs_dim=4, act_dim=1) == "seq"
    decode(frame(mtype, payload, seq=1), obs_dim=4, act_dim=1)  # the same frame with seq 1 is valid


# --- the document's examples -------------------------------------------------------------------


def doc_examples() -> list[bytes]:
    blocks = re.findall(r"```hexdump\n(.*?)```", DOC.read_text(), re.S)
    return [bytes.fromhex("".join(line[6:] for line in block.splitlines())) for block in blocks]


def test_protocol_md_examples_decode_as_documented():
    act, obs, *_batched = doc_examples()
    msg = decode(act, act_dim=2)
    assert (msg.type, msg.flags, msg.seq, msg.ack, msg.timestamp_ns) == (MsgType.ACT, 0, 7, 6, 1_000_000_000)
    assert (msg.episode, msg.step) == (2, 5)
    np.testing.assert_array_equal(msg.values, [0.5, -1.0])
    msg = decode(obs, obs_dim=2)
    assert (msg.type, msg.flags, msg.seq, msg.ack, msg.timestamp_ns) == (
        MsgType.OBS,
        ObsFlag.RESET,
        1,
        0,
        2_000_000_000,
    )
    np.testing.assert_array_equal(msg.obs, [0.25, -0.5])
    assert msg.reward == 0.0


def test_protocol_md_examples_match_the_encoder_apart_from_the_clock():
    act, obs, *_batched = doc_examples()
    enc = Encoder(obs_dim=2, act_dim=2)
    enc._seq = 6
    ours = bytearray(enc.act([0.5, -1.0], ack=6, episode=2, step=5))
    struct.pack_into("<Q", ours, 16, 1_000_000_000)
    assert bytes(ours) == act
    enc._seq = 0
    ours = bytearray(enc.obs([0.25, -0.5], 0.0, flags=ObsFlag.RESET))
    struct.pack_into("<Q", ours, 16, 2_000_000_000)
    assert bytes(ours) == obs


def test_header_layout_is_the_documented_one():
    assert HEADER.format == "<4sBBHIIQIIII" and HEADER_SIZE == 40 and MAGIC == b"PLRT"


# --- endpoints and the error tally -------------------------------------------------------------


@pytest.mark.parametrize(
    "given_ep, derived",
    [
        ("tcp://127.0.0.1:5555", "tcp://127.0.0.1:5556"),
        ("tcp://*:7000", "tcp://*:7001"),
        ("ipc:///tmp/robot.sock", "ipc:///tmp/robot.sock.stream"),
    ],
)
def test_stream_endpoint_is_derived_deterministically(given_ep, derived):
    assert stream_endpoint(given_ep) == derived


@pytest.mark.parametrize("bad", ["tcp://127.0.0.1", "tcp://host:65535", "udp://x:1", "tcp://h:port"])
def test_stream_endpoint_refuses_what_it_cannot_derive(bad):
    with pytest.raises(ValueError):
        stream_endpoint(bad)
