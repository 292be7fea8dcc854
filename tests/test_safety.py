"""SafetyChain: every stage, every fallback mode, every fault reason, batches with independent
slots, counting and event logging."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from policyrt.controllers.safety import (
    ACT_ESTOP,
    ACT_FALLBACK,
    DEADLINE,
    ESTOP,
    NONFINITE,
    STALE,
    SafetyChain,
    parse_fallback,
)

ALL = np.ones(1, bool)


def run(chain, raw, faults=None, tick=0, active=None):
    raw = None if raw is None else np.asarray(raw, np.float32).reshape(chain.batch, chain.act_dim)
    faults = np.zeros(chain.batch, np.uint8) if faults is None else np.asarray(faults, np.uint8).copy()
    active = np.ones(chain.batch, bool) if active is None else np.asarray(active, bool)
    out = chain.filter(raw, faults, tick, active)
    return out.copy(), chain.flags.copy(), faults


def test_clips_to_bounds_without_flags():
    chain = SafetyChain([-1.0, -2.0], [1.0, 2.0])
    out, flags, _ = run(chain, [5.0, -5.0])
    assert out.tolist() == [[1.0, -2.0]] and flags.tolist() == [0]
    assert chain.applied.tolist() == [[1.0, -2.0]]
    assert chain.fallback_ticks == 0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("mode, expected", [("hold", 0.5), ("zero", 0.0), ([0.25], 0.25)])
def test_non_finite_actions_get_the_fallback(bad, mode, expected):
    chain = SafetyChain([-1.0], [1.0], fallback=mode)
    run(chain, [0.5])
    out, flags, faults = run(chain, [bad], tick=1)
    assert out.tolist() == [[expected]]
    assert flags.tolist() == [ACT_FALLBACK] and faults.tolist() == [NONFINITE]
    assert chain.counts["nonfinite"] == 1 and chain.fallback_ticks == 1


def test_one_non_finite_dimension_replaces_the_whole_row():
    chain = SafetyChain([-1.0, -1.0], [1.0, 1.0], fallback="zero")
    out, flags, _ = run(chain, [0.5, np.nan])
    assert out.tolist() == [[0.0, 0.0]] and flags[0] == ACT_FALLBACK


@pytest.mark.parametrize("reason, name", [(STALE, "stale"), (DEADLINE, "deadline"), (ESTOP, "estop")])
def test_caller_faults_get_the_fallback_and_are_counted(reason, name):
    chain = SafetyChain([-1.0], [1.0], fallback="zero")
    out, flags, _ = run(chain, [0.7], faults=[reason])
    assert out.tolist() == [[0.0]]
    assert flags[0] == ACT_FALLBACK | (ACT_ESTOP if reason == ESTOP else 0)
    assert chain.counts[name] == 1
    assert chain.applied.tolist() == [[0.0]]  # the fallback is what was applied


def test_estop_combined_with_other_faults_keeps_the_estop_flag():
    chain = SafetyChain([-1.0], [1.0])
    _, flags, _ = run(chain, [np.nan], faults=[ESTOP | STALE])
    assert flags[0] == ACT_FALLBACK | ACT_ESTOP
    assert chain.counts["estop"] == chain.counts["stale"] == chain.counts["nonfinite"] == 1


def test_hold_repeats_the_last_applied_action_across_a_fault_run():
    chain = SafetyChain([-1.0], [1.0], fallback="hold")
    run(chain, [0.3])
    for tick in range(1, 4):
        out, _, _ = run(chain, [0.9], faults=[STALE], tick=tick)
        assert out.tolist() == [[pytest.approx(0.3)]]
    assert chain.counts["stale"] == 3


def test_hold_before_any_action_holds_zero_clipped_into_the_bounds():
    chain = SafetyChain([0.5], [1.0], fallback="hold")
    out, _, _ = run(chain, [0.7], faults=[STALE])
    assert out.tolist() == [[0.5]]  # zero lies outside: the bound nearest to it


def test_configured_safe_action_outside_the_bounds_is_clipped(caplog):
    with caplog.at_level(logging.WARNING):
        chain = SafetyChain([-1.0, -1.0], [1.0, 1.0], fallback=[2.0, -0.5])
    assert "outside the bounds" in caplog.text
    out, _, _ = run(chain, [0.0, 0.0], faults=[ESTOP])
    assert out.tolist() == [[1.0, -0.5]]


def test_rate_limit_caps_the_change_per_tick_and_counts_it():
    chain = SafetyChain([-10.0], [10.0], max_delta=0.5)
    outs = [run(chain, [3.0], tick=t)[0][0, 0] for t in range(8)]
    assert outs == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.0, 3.0])
    assert chain.counts["rate_limited"] == 5
    out, _, _ = run(chain, [-3.0], tick=8)
    assert out[0, 0] == pytest.approx(2.5)


def test_rate_limit_per_dimension_and_within_bounds():
    chain = SafetyChain([-1.0, -1.0], [1.0, 1.0], max_delta=[0.1, 1.0])
    out, _, _ = run(chain, [5.0, 5.0])
    assert out.tolist() == [[pytest.approx(0.1), 1.0]]


def test_fallback_bypasses_the_rate_limit():
    chain = SafetyChain([-10.0], [10.0], fallback="zero", max_delta=0.5)
    for t in range(6):
        run(chain, [3.0], tick=t)
    out, _, _ = run(chain, [3.0], faults=[ESTOP], tick=6)
    assert out.tolist() == [[0.0]]
    out, _, _ = run(chain, [3.0], tick=7)  # resumes gradually from the applied fallback
    assert out[0, 0] == pytest.approx(0.5)


def test_batch_slots_are_independent():
    chain = SafetyChain([-1.0], [1.0], batch=3, fallback="zero")
    out, flags, _ = run(chain, [[0.5], [np.nan], [0.2]], faults=[0, 0, ESTOP])
    assert out.tolist() == [[0.5], [0.0], [0.0]]
    assert flags.tolist() == [0, ACT_FALLBACK, ACT_FALLBACK | ACT_ESTOP]
    assert chain.counts["nonfinite"] == 1 and chain.counts["estop"] == 1


def test_inactive_slots_are_neither_applied_nor_counted():
    chain = SafetyChain([-1.0], [1.0], batch=2, fallback="zero")
    run(chain, [[0.5], [0.5]])
    run(chain, [[0.9], [np.nan]], active=[True, False], tick=1)
    assert chain.applied.tolist() == [[pytest.approx(0.9)], [0.5]]
    assert chain.counts["nonfinite"] == 0


def test_no_raw_action_means_every_active_slot_falls_back():
    chain = SafetyChain([-1.0], [1.0], batch=2)
    _, flags, faults = run(chain, None, faults=[ESTOP, 0])
    assert flags.tolist() == [ACT_FALLBACK | ACT_ESTOP, ACT_FALLBACK]
    assert faults.tolist() == [ESTOP, DEADLINE]


def test_fault_runs_are_logged_once_at_start_and_end_with_their_ticks(caplog):
    chain = SafetyChain([-1.0], [1.0])
    with caplog.at_level(logging.WARNING):
        run(chain, [0.1], tick=0)
        for t in range(1, 101):
            run(chain, [0.1], faults=[STALE], tick=t)
        run(chain, [0.1], tick=101)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "tick 1: robot slot 0: stale -> fallback action (hold)",
        "tick 101: robot slot 0: stale cleared after 100 tick(s)",
    ]
    assert chain.counts["stale"] == 100
    events = chain.recent_events()
    assert events.tolist() == [[1, 0, STALE, 1], [101, 0, STALE, 0]]


def test_event_ring_keeps_the_most_recent_in_order():
    chain = SafetyChain([-1.0], [1.0], event_capacity=4)
    for t in range(10):
        run(chain, [0.0], faults=[STALE if t % 2 == 0 else 0], tick=t)
    events = chain.recent_events()
    assert len(events) == 4 and events[:, 0].tolist() == sorted(events[:, 0].tolist())
    assert events[-1].tolist() == [9, 0, STALE, 0]


def test_set_bounds_and_forget():
    chain = SafetyChain([-1.0], [1.0], fallback="hold")
    run(chain, [0.8])
    chain.set_bounds(0, np.array([-0.5], np.float32), np.array([0.5], np.float32))
    out, _, _ = run(chain, [0.8], tick=1)
    assert out.tolist() == [[0.5]]
    chain.forget(np.array([True]))
    assert chain.applied.tolist() == [[0.0]]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(fallback="brake"), "neither 'hold'"),
        (dict(fallback=[0.0, 1.0]), "2 values"),
        (dict(max_delta=0.0), "max_delta"),
        (dict(max_delta=float("nan")), "max_delta"),
    ],
)
def test_bad_configuration_is_refused_with_a_message(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SafetyChain([-1.0], [1.0], **kwargs)


def test_bounds_low_above_high_are_refused():
    with pytest.raises(ValueError, match="low > high"):
        SafetyChain([1.0], [-1.0])


def test_parse_fallback():
    assert parse_fallback("hold") == "hold" and parse_fallback("zero") == "zero"
    assert parse_fallback("0.5,-1") == (0.5, -1.0)
    assert parse_fallback([1, 2]) == (1.0, 2.0)


def test_filter_allocates_no_new_output_arrays():
    chain = SafetyChain([-1.0], [1.0], max_delta=0.1)
    out1 = chain.filter(np.zeros((1, 1), np.float32), np.zeros(1, np.uint8), 0, ALL)
    out2 = chain.filter(np.ones((1, 1), np.float32), np.zeros(1, np.uint8), 1, ALL)
    assert out1 is out2 is chain.out


def test_estop_sends_the_safe_action_even_in_hold_mode():
    chain = SafetyChain([-1.0], [1.0], fallback="hold")
    run(chain, [0.6])
    out, flags, _ = run(chain, [0.6], faults=[ESTOP], tick=1)
    assert out.tolist() == [[0.0]] and flags[0] == ACT_FALLBACK | ACT_ESTOP
    out, _, _ = run(chain, [0.6], faults=[STALE], tick=2)
    assert out.tolist() == [[0.0]]  # hold now holds what the e-stop applied


def test_many_fault_runs_are_all_counted_but_logged_sparsely(caplog):
    chain = SafetyChain([-1.0], [1.0])
    with caplog.at_level(logging.WARNING):
        for t in range(0, 500, 2):  # 250 one-tick stale runs
            run(chain, [0.1], faults=[STALE], tick=t)
            run(chain, [0.1], tick=t + 1)
    assert chain.runs["stale"] == 250 and chain.counts["stale"] == 250
    starts = [r.getMessage() for r in caplog.records if "-> fallback" in r.getMessage()]
    assert len(starts) == 10 + 2  # runs 1..10, 100, 200
    assert "only every 100th run is logged" in starts[9] and "[run 200]" in starts[-1]


# ---- properties over random bounds, actions, faults and settings --------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_any = st.floats(width=32, allow_nan=True, allow_infinity=True)
_finite = st.floats(-100, 100, width=32)


@st.composite
def _case(draw):
    dim, batch = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    lows = draw(st.lists(_finite, min_size=dim, max_size=dim))
    widths = draw(st.lists(st.floats(0, 50, width=32), min_size=dim, max_size=dim))
    low = np.array(lows, np.float32)
    high = (low + np.array(widths, np.float32)).astype(np.float32)
    mode = draw(st.sampled_from(["hold", "zero", "safe"]))
    fallback = draw(st.lists(_finite, min_size=dim, max_size=dim)) if mode == "safe" else mode
    delta = draw(st.one_of(st.none(), st.floats(0.0625, 10, width=32)))
    ticks = draw(
        st.lists(
            st.tuples(
                st.lists(_any, min_size=batch * dim, max_size=batch * dim),
                st.lists(
                    st.sampled_from([0, STALE, DEADLINE, ESTOP, STALE | ESTOP]),
                    min_size=batch,
                    max_size=batch,
                ),
                st.lists(st.booleans(), min_size=batch, max_size=batch),
            ),
            min_size=1,
            max_size=6,
        )
    )
    return dim, batch, low, high, fallback, delta, ticks


@settings(max_examples=300, deadline=None)
@given(_case())
def test_the_output_is_always_finite_within_bounds_rate_limited_and_flagged(case):
    dim, batch, low, high, fallback, delta, ticks = case
    chain = SafetyChain(low, high, batch=batch, fallback=fallback, max_delta=delta)
    for tick, (values, caller_faults, active) in enumerate(ticks):
        raw = np.array(values, np.float32).reshape(batch, dim)
        before = chain.applied.copy()
        faults = np.array(caller_faults, np.uint8)
        active = np.array(active, bool)
        out = chain.filter(raw, faults, tick, active).copy()
        flags = chain.flags
        for slot in np.flatnonzero(active):
            row = out[slot]
            assert np.isfinite(row).all()
            assert (row >= low - 1e-6).all() and (row <= high + 1e-6).all()
            finite = np.isfinite(raw[slot]).all()
            faulted = caller_faults[slot] != 0 or not finite
            assert bool(flags[slot] & ACT_FALLBACK) == faulted
            assert bool(flags[slot] & ACT_ESTOP) == bool(caller_faults[slot] & ESTOP)
            if not faulted and delta is not None:
                assert (np.abs(row - before[slot]) <= np.float32(delta) * (1 + 1e-5) + 1e-5).all()
            if not faulted and delta is None:
                assert np.array_equal(row, np.clip(raw[slot], low, high))
        assert np.array_equal(chain.applied[~active], before[~active])  # inactive slots untouched
