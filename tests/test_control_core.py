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
from policyrt.controllers.safety import ACT_FALLBACK, OBS_RANGE, SafetyChain  # noqa: E402

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


# --- one finite but huge observation (issue 12): the guard and the state reset, every shipped bundle ---

BUNDLES = sorted((Path(__file__).resolve().parents[1] / "bundles").glob("*.policy"))
HUGE, AT = np.float32(3e38), 5  # the observation value and the tick it arrives at


def guarded_core(bundle: Path, factor: float, batch: int = 1) -> ControlCore:
    session = policyrt.load(bundle, batch_size=batch)
    low, high = manifest_bounds(session.manifest)
    chain = SafetyChain(low, high, batch=batch, fallback="zero")
    core = ControlCore(session, chain, ("tick",), obs_range_factor=factor)
    core.record.live[:] = True
    return core


def in_range_obs(manifest, rng, batch: int) -> np.ndarray:
    """Observations the training data could have held: inside the bundle's recorded range."""
    low, high = manifest.obs_low, manifest.obs_high
    return (low + (high - low) * rng.uniform(0.25, 0.75, (batch, manifest.obs_dim))).astype(np.float32)


def drive(core: ControlCore, ticks: int, huge_row: int = 0, seed: int = 0):
    """Tick with in-range observations, the huge one in `huge_row`'s first channel at tick AT;
    returns per tick (raw finite per row, act flags, fault bits) copies."""
    rec, rng = core.record, np.random.default_rng(seed)
    finite, flags, faults = [], [], []
    for tick in range(ticks):
        rec.tick = tick
        rec.obs[:] = in_range_obs(core.session.manifest, rng, len(rec.obs))
        if tick == AT:
            rec.obs[huge_row, 0] = HUGE
        rec.faults.fill(0)
        core.tick(reset_any=False, run_policy=True, faulted=False)
        finite.append(np.isfinite(rec.raw).all(axis=1))
        flags.append(rec.act_flags.copy())
        faults.append(rec.faults.copy())
    return np.array(finite), np.array(flags), np.array(faults)


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.stem)
def test_a_huge_observation_costs_one_fallback_tick_with_the_guard_on(bundle):
    core = guarded_core(bundle, factor=10)
    finite, flags, faults = drive(core, 30)
    assert finite.all(), "the policy was fed the observation clipped into the box: every raw action is finite"
    assert faults[AT, 0] == OBS_RANGE and flags[AT, 0] == ACT_FALLBACK
    others = np.delete(np.arange(len(flags)), AT)
    assert (flags[others] == 0).all() and (faults[others] == 0).all(), "normal actions before and after"
    assert core.chain.counts["obs_range"] == 1 and core.chain.fallback_ticks == 1 and core.state_resets == 0
    assert all(np.isfinite(v).all() for v in core.session.state().values())
    core.record.obs[0, 0] = HUGE
    core.tick(reset_any=False, run_policy=True, faulted=False)
    assert core.record.obs[0, 0] == HUGE, "observers see what the robot sent, not the clipped value"


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.stem)
def test_a_huge_observation_costs_at_most_one_nonfinite_action_with_the_guard_off(bundle):
    """Before the state reset every shipped bundle's state stayed NaN for ~50 ticks (until the
    episode's end); now the non-finite action's row starts over and the next tick is clean."""
    core = guarded_core(bundle, factor=0)
    finite, flags, _ = drive(core, 60)
    bad = np.flatnonzero(~finite[:, 0])
    assert len(bad) <= 1 and set(bad) <= {AT, AT + 1}, f"non-finite raw actions at ticks {bad}"
    assert finite[AT + 2:].all(), "recovered within two ticks"
    assert core.state_resets == len(bad) and core.chain.counts["nonfinite"] == len(bad)
    assert (flags[AT + 2:] == 0).all()
    assert all(np.isfinite(v).all() for v in core.session.state().values())


def test_only_the_poisoned_row_is_reset_in_a_batch():
    bundle = BUNDLES[0]
    core = guarded_core(bundle, factor=0, batch=4)
    resets = []
    rec, rng = core.record, np.random.default_rng(1)
    for tick in range(AT + 3):
        rec.tick = tick
        rec.obs[:] = in_range_obs(core.session.manifest, rng, 4)
        if tick == AT:
            rec.obs[2, 0] = HUGE
        core.tick(reset_any=False, run_policy=True, faulted=False)
        resets.append(rec.state_reset.copy())
        assert np.isfinite(rec.raw[[0, 1, 3]]).all()
    assert core.state_resets == 1 and np.array_equal(resets[AT], [False, False, True, False])
    assert not np.array(resets[AT + 1:]).any(), "the reset mark lasts one tick"
    assert np.isfinite(rec.raw).all()


def test_the_guard_allocates_nothing_on_the_fault_free_path(traced):
    session = policyrt.load(BUNDLE)
    core = guarded_core(BUNDLE, factor=10)
    core.record.obs[:] = in_range_obs(session.manifest, np.random.default_rng(0), 1)
    run_ticks(core, 300)
    before = tracemalloc.get_traced_memory()[0]
    worst = run_ticks(core, 5000, start=300)
    assert tracemalloc.get_traced_memory()[0] - before < 2048 and worst < 2048
    assert core.chain.fallback_ticks == 0


def test_a_bundle_without_a_recorded_range_says_the_guard_is_off(tmp_path, caplog):
    bare = copy_without_range(BUNDLE, tmp_path / "bare.policy")
    with caplog.at_level("WARNING", logger="policyrt.controllers.core"):
        core = guarded_core(bare, factor=10)
    assert [r.getMessage() for r in caplog.records] == [
        f"{bare}: observation guard off: the bundle records no observation range (obs_low/obs_high)"
    ]
    rec = core.record
    rec.obs[:] = HUGE
    core.tick(reset_any=False, run_policy=True, faulted=False)
    assert not rec.faults & OBS_RANGE


def copy_without_range(src: Path, dst: Path) -> Path:
    """A copy of a shipped bundle whose manifest records no observation range (as bundles
    exported before the range was recorded)."""
    import json
    import shutil

    from policyrt.bundle import write_manifest

    shutil.copytree(src, dst)
    doc = json.loads((dst / "manifest.json").read_text())
    for key in ("obs_low", "obs_high", "files"):
        doc.pop(key, None)
    (dst / "bundle.sha256").unlink(missing_ok=True)
    write_manifest(dst, doc)
    return dst


def test_training_and_export_record_the_observation_range(tmp_path):
    """The range the guard reads: the training data's per-channel min/max (sequence_data), kept in
    the policy config and written to the manifest's top level by the exporter."""
    import json
    import subprocess
    import sys
    from argparse import Namespace

    from conftest import tiny_policy

    from policyrt.export.bundle_export import export_policy
    from policyrt.policies.sequence_data import dataset_for_training

    data = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "policyrt.cli", "sim", "collect", "--env", "InvertedPendulum-v5",
                    "--expert", "lqr", "--episodes", "2", "--seed", "0", "--out", str(data)],
                   check=True, capture_output=True)
    dataset, fields, _ = dataset_for_training(Namespace(data=data, return_scale=1.0, target_return=None), None)
    observed = np.concatenate([e.observations for e in dataset.episodes])
    assert fields["obs_low"] == tuple(observed.min(0).tolist()) and fields["obs_high"] == tuple(observed.max(0).tolist())

    policy = tiny_policy(obs_dim=4, act_dim=1, obs_low=fields["obs_low"], obs_high=fields["obs_high"])
    doc = {"kind": "xlstm", "config": policy.config.to_dict()}
    out = export_policy(policy, doc, Path("random"), tmp_path / "ranged.policy", progress=lambda *_: None)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["obs_low"] == list(fields["obs_low"]) and manifest["obs_high"] == list(fields["obs_high"])
    session = policyrt.load(out)
    assert np.array_equal(session.manifest.obs_low, np.float32(fields["obs_low"]))
