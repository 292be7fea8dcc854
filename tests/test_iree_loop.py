"""The IREE backend in the closed loop: `policyrt run --backend auto` against `policyrt sim serve`, with
the shipped pendulum xLSTM compiled and verified for this CPU (auto must take it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from wire_helpers import PATIENCE_S, endpoint_for, python_env, reap_processes, start_sim_server

pytest.importorskip("iree.runtime")
pytest.importorskip("iree.compiler")
pytest.importorskip("gymnasium")

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "inverted-pendulum-xlstm.policy"


@pytest.fixture(autouse=True)
def _reap():
    yield
    reap_processes()


@pytest.mark.slow
def test_policyrt_run_on_auto_takes_the_verified_artifact_and_balances_one_episode(tmp_path):
    bundle = tmp_path / BUNDLE.name
    shutil.copytree(BUNDLE, bundle)
    for command in (["build-engine", str(bundle), "--backend", "iree"], ["verify", str(bundle), "--backend", "iree"]):
        done = subprocess.run([sys.executable, "-m", "policyrt.cli", *command], capture_output=True, text=True,
                              env=python_env(), timeout=PATIENCE_S * 5)
        assert done.returncode == 0, done.stderr
    ep = endpoint_for("ipc")
    results = tmp_path / "serve.json"
    server = start_sim_server(ep, "--episodes", "1", results=results)
    run = subprocess.run([sys.executable, "-m", "policyrt.cli", "run", str(bundle), "--connect", ep, "--backend", "auto"],
                         capture_output=True, text=True, env=python_env(), timeout=PATIENCE_S * 5)
    assert run.returncode == 0, run.stderr
    assert "backend auto: iree" in run.stderr
    assert "stopped: robot_left" in run.stdout and "return mean 1000.00" in run.stdout
    server.communicate(timeout=PATIENCE_S)
    assert [e["episode_return"] for e in json.loads(results.read_text())["episodes"]] == [1000.0]
