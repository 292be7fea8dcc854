"""The shipped pendulum bundles (xLSTM, DT): intact, verified, and balancing in closed loop across two processes."""

from __future__ import annotations

import pytest
from conftest import SHIPPED_BUNDLE, SHIPPED_DT_BUNDLE

needs_xlstm_bundle = pytest.mark.skipif(not SHIPPED_BUNDLE.exists(), reason="shipped bundle not built yet")


@needs_xlstm_bundle
def test_shipped_bundle_opens_and_passes_verify():
    from policyrt.bundle import open_bundle
    from policyrt.runtime.verify import verify_backend

    bundle = open_bundle(SHIPPED_BUNDLE)
    m = bundle.manifest
    assert (m.obs_dim, m.act_dim, m.env_id) == (4, 1, "InvertedPendulum-v5")
    cfg = m.raw["policy"]["config"]
    assert (cfg["num_blocks"], cfg["embedding_dim"], cfg["num_heads"]) == (4, 128, 4)
    commands = m.raw["provenance"]["commands"]
    assert [c.split()[1] for c in commands] == ["sim", "train", "export"]
    report = verify_backend(bundle, "onnxruntime")
    assert report.ok, report.table()


@pytest.mark.slow
@needs_xlstm_bundle
def test_demo_balances_every_episode_over_ipc():
    from policyrt.commands._procs import closed_loop

    server, controller = closed_loop(str(SHIPPED_BUNDLE), "InvertedPendulum-v5", episodes=2, seed=11)
    returns = [e["episode_return"] for e in server["episodes"]]
    assert returns == [1000.0, 1000.0]
    assert controller["errors"] == {} or sum(controller["errors"].values()) == 0
    assert controller["timing"]["infer"]["n"] == 2000


@pytest.mark.slow
@needs_xlstm_bundle
def test_demo_command_runs_end_to_end(capsys):
    from policyrt.cli import main

    assert main(["demo", "--episodes", "1", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "policy matches the expert" in out and "infer" in out


@pytest.mark.skipif(not SHIPPED_DT_BUNDLE.exists(), reason="shipped DT bundle not built yet")
def test_shipped_dt_bundle_is_the_benchmark_config_and_verifies():
    from policyrt.bundle import open_bundle
    from policyrt.runtime.verify import verify_backend

    bundle = open_bundle(SHIPPED_DT_BUNDLE)
    cfg = bundle.manifest.raw["policy"]["config"]
    assert (cfg["n_layer"], cfg["hidden_size"], cfg["n_head"], cfg["context"]) == (3, 128, 1, 20)
    assert [c.split()[1] for c in bundle.manifest.raw["provenance"]["commands"]] == ["sim", "train", "export"]
    assert verify_backend(bundle, "onnxruntime").ok


@pytest.mark.slow
@pytest.mark.skipif(not SHIPPED_DT_BUNDLE.exists(), reason="shipped DT bundle not built yet")
def test_dt_bundle_balances_in_closed_loop_over_ipc():
    from policyrt.commands._procs import closed_loop

    server, controller = closed_loop(str(SHIPPED_DT_BUNDLE), "InvertedPendulum-v5", episodes=1, seed=5)
    assert [e["episode_return"] for e in server["episodes"]] == [1000.0]
    assert controller["timing"]["infer"]["n"] == 1000
