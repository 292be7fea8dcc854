"""TickScheduler on a simulated clock: deadlines are absolute, overruns skip instead of bursting.

No wall-clock thresholds: the clock is a counter the test advances."""

from __future__ import annotations

import pytest

from policyrt.scheduler import TickScheduler


class FakeClock:
    def __init__(self, t: int = 1_000_000):
        self.t = t

    def __call__(self) -> int:
        self.t += 1  # every reading costs a nanosecond, so a busy-wait always ends
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += int(seconds * 1e9)


def make(rate=1000.0, spin_us=50.0):
    clock = FakeClock()
    sched = TickScheduler(rate, spin_us=spin_us, clock=clock, sleep=clock.sleep)
    sched.start()
    return sched, clock


def test_ticks_start_at_their_absolute_deadlines_without_drift():
    sched, clock = make()
    starts = []
    for expected in range(100):
        assert sched.wait() == expected
        starts.append(clock.t)
        clock.t += 300_000  # 0.3 ms of work per tick
    # Each start lies within a few fake ns after t0 + k * period: no accumulation.
    for k, t in enumerate(starts):
        assert 0 <= t - sched.due(k) < 1000
    assert sched.skipped == 0 and sched.overruns == 0


def test_an_overrun_skips_the_missed_ticks_and_counts_them():
    sched, clock = make()
    assert sched.wait() == 0
    clock.t += 3_500_000  # tick 0 took 3.5 periods: ticks 1, 2 and 3 are overdue
    assert sched.wait() == 3  # starts at the latest passed deadline at once, no burst
    assert sched.skipped == 2 and sched.overruns == 1
    assert sched.wait() == 4  # and then back on the grid
    assert 0 <= clock.t - sched.due(4) < 1000


def test_a_slightly_late_tick_runs_late_rather_than_being_skipped():
    sched, clock = make()
    sched.wait()
    clock.t += 1_200_000  # 1.2 periods: tick 1 is late by 0.2, tick 2 not yet due
    assert sched.wait() == 1
    assert sched.skipped == 0
    assert sched.jitter_ns()[-1] >= 199_000


def test_jitter_is_recorded_per_tick_and_summarized():
    sched, clock = make()
    for _ in range(10):
        sched.wait()
    assert sched.count == 10 and len(sched.jitter_ns()) == 10
    summary = sched.jitter_summary()
    assert summary["n"] == 10 and summary["max_us"] >= summary["p50_us"] >= 0


def test_deadline_is_the_next_tick_due_time():
    sched, _ = make(rate=500.0)
    sched.wait()
    assert sched.deadline_ns == sched.due(1) == sched.t0 + 2_000_000


def test_rejects_a_non_positive_rate():
    with pytest.raises(ValueError, match="rate_hz"):
        TickScheduler(0)


def test_real_clock_smoke():
    sched = TickScheduler(2000.0, spin_us=100)
    sched.start()
    ticks = [sched.wait() for _ in range(20)]
    assert ticks == sorted(ticks) and len(set(ticks)) == 20
