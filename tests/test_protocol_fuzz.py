"""Decoding random and corrupted bytes raises ProtocolError and nothing else (Hypothesis); the error
itself and the per-kind tally the loops keep (policyrt/protocol_errors.py)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wire_helpers import frame

from policyrt.protocol import Encoder, ErrorTally, MsgType, ProtocolError, decode


def test_error_carries_kind_and_detail_and_refuses_unknown_kinds():
    err = ProtocolError("dims", "ACT holds 2 values")
    assert (err.kind, err.detail) == ("dims", "ACT holds 2 values") and "dims" in str(err)
    with pytest.raises(AssertionError):
        ProtocolError("oops", "")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_protocol_errors(data):
    try:
        decode(data, obs_dim=4, act_dim=1)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.sampled_from(list(MsgType)))
def test_random_payloads_behind_a_valid_header_raise_only_protocol_errors(payload, mtype):
    try:
        decode(frame(mtype, payload), obs_dim=4, act_dim=1)
    except ProtocolError:
        pass


finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(finite32, min_size=1, max_size=32),
    finite32,
    st.integers(0, 7),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
)
def test_any_valid_obs_round_trips(obs, reward, flags, episode, step):
    enc = Encoder(obs_dim=len(obs))
    msg = decode(enc.obs(obs, reward, flags=flags, episode=episode, step=step), obs_dim=len(obs))
    np.testing.assert_array_equal(msg.obs, np.array(obs, np.float32))
    assert msg.reward == np.float32(reward)
    assert (msg.flags, msg.episode, msg.step) == (flags, episode, step)


@settings(max_examples=200, deadline=None)
@given(st.lists(finite32, min_size=1, max_size=8), st.integers(0, 2**32 - 1), st.integers(0, 1000), st.data())
def test_single_byte_corruption_never_escapes_as_another_exception(action, ack, position, data):
    good = bytearray(Encoder(act_dim=len(action)).act(action, ack=ack))
    i = position % len(good)
    good[i] = data.draw(st.integers(0, 255))
    try:
        decode(bytes(good), act_dim=len(action))
    except ProtocolError:
        pass


def test_error_tally_counts_every_error_and_logs_each_kind_once(caplog):
    tally = ErrorTally(logging.getLogger("test.tally"), "tester")
    with caplog.at_level(logging.WARNING, "test.tally"):
        for _ in range(5):
            tally.add(ProtocolError("magic", "bad"))
        tally.add(ProtocolError("dims", "bad"))
    assert tally.counts == {"magic": 5, "dims": 1} and tally.total == 6
    assert len(caplog.records) == 2
