"""The control core's tick with a real ONNX Runtime session from a shipped bundle: it allocates
nothing per tick (tracemalloc), whatever the batch."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

import policyrt  # noqa: E402
from policyrt.controllers.core import ControlCore, manifest_bounds  # noqa: E402
from policyrt.controllers.safety import SafetyChain  # noqa: E402

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "reacher-xlstm.policy"


def core_of(batch: int) -> ControlCore:
    session = policyrt.load(BUNDLE, batch_size=batch)
    low, high = manifest_bounds(session.manifest)
    core = ControlCore(session, SafetyChain(low, high, batch=batch, fallback="zero"), ("tick",))
    rec = core.record
    rec.live[:] = True
    rec.obs[:] = np.random.default_rng(0).standard_normal(rec.obs.shape)
    rec.rewards[:] = 0.5
    return core


def run_ticks(core: ControlCore, ticks: int, start: int = 0) -> int:
    """Run ticks under tracemalloc; returns the largest transient peak of one tick, in bytes."""
    rec, worst = core.record, 0
    reset_peak, traced = tracemalloc.reset_peak, tracemalloc.get_traced_memory
    for tick in range(start, start + ticks):
        reset_peak()
        before = traced()[0]
        rec.tick = tick
        core.tick(reset_any=False, run_policy=True, faulted=False)
        worst = max(worst, traced()[1] - before)
    return worst


@pytest.fixture
def traced():
    tracemalloc.start()
    yield
    tracemalloc.stop()


def test_ten_thousand_ticks_retain_nothing(traced):
    core = core_of(1)
    run_ticks(core, 300)  # warm-up: first-use caches of numpy and ONNX Runtime
    before = tracemalloc.get_traced_memory()[0]
    worst = run_ticks(core, 10_000, start=300)
    grown = tracemalloc.get_traced_memory()[0] - before
    # One object kept per tick would be >= 160 kB; numpy's and pybind11's per-call bookkeeping
    # (iterators, argument tuples) is freed within the call and stays under 2 kB.
    assert grown < 2048, f"{grown} bytes retained over 10,000 ticks"
    assert worst < 2048, f"a tick allocated {worst} bytes at its peak"
    assert np.isfinite(core.record.actions).all() and core.chain.fallback_ticks == 0


def test_no_tick_allocates_a_buffer_of_the_batch(traced):
    """At batch 256 every per-tick array (an action copy, an observation copy, a boolean-index
    result) would be at least raw.nbytes; numpy's own per-call bookkeeping stays far below."""
    core = core_of(256)
    run_ticks(core, 20)
    worst = run_ticks(core, 300, start=20)
    assert worst < core.record.raw.nbytes, f"a tick allocated {worst} bytes at its peak"
