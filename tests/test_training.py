"""Tiny versions of collect and train: real MuJoCo, real optimizer steps, deterministic per seed."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("gymnasium")

from policyrt.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "pend"
    assert main(["sim", "collect", "--env", "InvertedPendulum-v5", "--episodes", "2", "--action-noise", "0.3", "--out", str(out)]) == 0
    return out


def test_collect_writes_a_loadable_dataset(small_dataset):
    from policyrt.sim.dataset import load_dataset

    dataset = load_dataset(small_dataset)
    assert len(dataset.episodes) == 2 and dataset.obs_dim == 4 and dataset.act_dim == 1
    assert dataset.returns().min() == 1000  # LQR with noise 0.3 holds the pole
    meta = json.loads((small_dataset / "dataset.json").read_text())
    assert meta["command"].startswith("policyrt sim collect") and meta["control_dt"] == pytest.approx(0.04)


def test_lqr_expert_refuses_unsupported_env():
    import gymnasium as gym

    from policyrt.sim.experts import make_expert

    with pytest.raises(ValueError, match="supported environments: InvertedPendulum-v5"):
        make_expert("lqr", gym.make("Reacher-v5"))


def train(data, out, seed):
    args = ["train", "xlstm", "--data", str(data), "--out", str(out), "--steps", "3", "--batch-size", "2",
            "--window", "16", "--embedding-dim", "32", "--num-blocks", "1", "--num-heads", "2", "--seed", str(seed)]
    assert main(args) == 0
    return (out / "model.safetensors").read_bytes()


def test_training_is_deterministic_per_seed_and_records_commands(small_dataset, tmp_path):
    first = train(small_dataset, tmp_path / "a", seed=7)
    again = train(small_dataset, tmp_path / "b", seed=7)
    other = train(small_dataset, tmp_path / "c", seed=8)
    assert first == again
    assert first != other
    doc = json.loads((tmp_path / "a" / "config.json").read_text())
    assert doc["commands"][0].startswith("policyrt sim collect")
    assert doc["commands"][1].startswith("policyrt train xlstm")
    assert doc["train_steps_done"] == 3


def test_dataset_with_a_missing_field_is_named(small_dataset, tmp_path):
    from policyrt.sim.dataset import load_dataset

    with np.load(small_dataset / "episodes.npz") as npz:
        arrays = {k: npz[k] for k in npz.files if k != "rewards"}
    bad = tmp_path / "bad"
    bad.mkdir()
    np.savez(bad / "episodes.npz", **arrays)
    (bad / "dataset.json").write_text("{}")
    with pytest.raises(ValueError, match="missing field"):
        load_dataset(bad)


def test_dt_training_is_deterministic_and_exports(small_dataset, tmp_path):
    args = ["train", "dt", "--data", str(small_dataset), "--steps", "3", "--batch-size", "4", "--context", "4",
            "--hidden-size", "32", "--n-layer", "1", "--n-head", "2", "--seed", "3"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert main(["export", str(tmp_path / "a"), "--out", str(tmp_path / "dt.policy")]) == 0
    manifest = json.loads((tmp_path / "dt.policy" / "manifest.json").read_text())
    assert manifest["policy"]["kind"] == "dt" and manifest["env_id"] == "InvertedPendulum-v5"
    assert [c.split()[1] for c in manifest["provenance"]["commands"]] == ["sim", "train", "export"]
