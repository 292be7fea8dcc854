"""Absolute-deadline fixed-rate scheduler for the real-time controller (and the real-time sim).

Tick k is due at `t0 + k * period`, computed from the start time every time, never as "now +
period": sleeping relative to now would add each tick's wake-up latency to the next one and the
loop would drift slower than its rate. Waiting is a coarse `time.sleep` until `spin` before the
deadline, then a busy-wait: the kernel's sleep wakes up tens to hundreds of microseconds late, the
busy-wait hits the deadline within a few microseconds at the price of that much CPU per tick.

An overrun -- the previous tick ended after the next deadline -- skips every deadline already
passed and counts them (`skipped`); it never runs the missed ticks back to back. A controller
that catches up by bursting would send several actions computed from the same observation within
microseconds, which is worse for a robot than one late action.

Board-side module: standard library and numpy only, Python 3.10.
"""

from __future__ import annotations

import os
import time

import numpy as np

_now = time.monotonic_ns


def _no_yield() -> None:
    pass


class TickScheduler:
    """`wait()` blocks until the next due tick and returns its index (ticks skipped by an overrun
    are never returned). Tick-start jitter (actual start minus due time, ns) goes into a ring
    allocated once, so waiting allocates nothing."""

    def __init__(
        self,
        rate_hz: float,
        spin_us: float = 200.0,
        jitter_capacity: int = 1 << 17,
        clock=_now,
        sleep=time.sleep,
    ):
        if not rate_hz > 0:
            raise ValueError(f"rate_hz must be > 0, got {rate_hz!r}")
        self.period_ns = int(round(1e9 / rate_hz))
        self.spin_ns = max(0, int(spin_us * 1000))
        self._clock = clock
        self._sleep = sleep  # clock and sleep are injectable so tests can run on simulated time
        # The busy-wait yields the CPU at every turn. Under SCHED_FIFO a thread that spins without
        # yielding starves the process's other threads of the same priority on its CPU -- among
        # them ZeroMQ's I/O thread, which then delivers no frame until the spin ends, so the
        # observation that arrived during the spin shows up one tick late.
        self._yield = getattr(os, "sched_yield", _no_yield)
        self.t0 = 0  # due time of tick 0; set by start()
        self.tick = -1  # index of the tick returned by the last wait()
        self.skipped = 0  # due ticks passed over because the loop was late
        self.overruns = 0  # wait() calls that found the next tick already overdue by a period
        self._jitter = np.zeros(jitter_capacity, np.int64)
        self.count = 0  # ticks started (= jitter samples recorded, including overwritten ones)

    @property
    def clock(self):
        """The clock ticks are due on (monotonic ns; injected in tests): time a tick's stages with it."""
        return self._clock

    def start(self, t0: int | None = None) -> None:
        """Tick 0 is due at t0 (default: now): call right before the first wait()."""
        self.t0 = self._clock() if t0 is None else t0
        self.tick = -1

    def due(self, tick: int) -> int:
        return self.t0 + tick * self.period_ns

    @property
    def deadline_ns(self) -> int:
        """The end of the current tick: when the next one is due."""
        return self.due(self.tick + 1)

    def wait(self) -> int:
        nxt = self.tick + 1
        now = self._clock()
        due = self.due(nxt)
        if now - due >= self.period_ns:
            # Late by a whole period or more: start at the latest deadline already passed instead
            # of every one of them.
            late = (now - due) // self.period_ns
            self.skipped += late
            self.overruns += 1
            nxt += late
            due = self.due(nxt)
        else:
            sleep_ns = due - now - self.spin_ns
            if sleep_ns > 0:
                self._sleep(sleep_ns / 1e9)
            while self._clock() < due:
                self._yield()
            now = self._clock()
        self._jitter[self.count % len(self._jitter)] = now - due
        self.count += 1
        self.tick = nxt
        return nxt

    def jitter_ns(self) -> np.ndarray:
        """Recorded tick-start jitter, ns (the last `jitter_capacity` ticks, unordered)."""
        return self._jitter[: min(self.count, len(self._jitter))]

    def jitter_summary(self) -> dict[str, float]:
        """{n, p50_us, p99_us, max_us} of the tick-start jitter; empty before the first tick."""
        j = self.jitter_ns()
        if not len(j):
            return {}
        p50, p99 = np.percentile(j, [50, 99]) / 1e3
        return {
            "n": int(len(j)),
            "p50_us": round(float(p50), 1),
            "p99_us": round(float(p99), 1),
            "max_us": round(float(j.max() / 1e3), 1),
        }
