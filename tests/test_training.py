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
    from policyrt.episodes import load_dataset

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
    from policyrt.episodes import load_dataset

    load_dataset(small_dataset).save(tmp_path / "npz", fmt="npz")
    with np.load(tmp_path / "npz" / "episodes.npz") as npz:
        arrays = {k: npz[k] for k in npz.files if k != "rewards"}
    np.savez(tmp_path / "npz" / "episodes.npz", **arrays)
    with pytest.raises(ValueError, match="missing field"):
        load_dataset(tmp_path / "npz")


def test_collect_writes_a_minari_dataset_that_minari_reads(small_dataset, monkeypatch):
    import minari

    from policyrt.episodes import load_dataset

    meta = json.loads((small_dataset / "dataset.json").read_text())
    assert meta["format"] == "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(small_dataset))
    ours = load_dataset(small_dataset)
    theirs = minari.load_dataset(meta["minari_dataset_id"])
    assert theirs.total_episodes == 2 and theirs.total_steps == sum(len(e) for e in ours.episodes)
    first = next(theirs.iterate_episodes())
    assert first.observations.shape == (len(ours.episodes[0]) + 1, 4)  # Minari keeps N + 1 observations
    np.testing.assert_array_equal(first.infos["expert_action"], ours.episodes[0].expert_actions)


def test_npz_and_minari_hold_the_same_episodes(small_dataset, tmp_path):
    from policyrt.episodes import FIELDS, load_dataset

    minari_ds = load_dataset(small_dataset)
    minari_ds.save(tmp_path / "npz", fmt="npz")
    npz_ds = load_dataset(tmp_path / "npz")
    for a, b in zip(minari_ds.episodes, npz_ds.episodes):
        for field in FIELDS:
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_inconsistent_rows_are_named(tmp_path):
    from policyrt.episodes import Dataset, Episode, load_dataset

    ep = Episode(observations=np.zeros((3, 4), np.float32), actions=np.zeros((3, 1), np.float32),
                 expert_actions=np.zeros((2, 1), np.float32), rewards=np.ones(3, np.float32),
                 terminations=np.zeros(3, bool), truncations=np.array([False, False, True]))
    meta = {"env_id": "InvertedPendulum-v5", "expert": "lqr", "action_low": [-3.0], "action_high": [3.0]}
    Dataset([ep], meta).save(tmp_path / "bad", fmt="npz")
    with pytest.raises(ValueError, match="field 'expert_actions' has 2 rows, rewards has 3"):
        load_dataset(tmp_path / "bad")


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


def test_double_pendulum_lqr_and_reacher_ik_experts_perform():
    import gymnasium as gym

    from policyrt.sim.collect import run_episode
    from policyrt.sim.experts import make_expert

    rng = np.random.default_rng(0)
    env = gym.make("InvertedDoublePendulum-v5")
    returns = [run_episode(env, make_expert("lqr", env), rng, 0.0, seed=s).total_return for s in range(2)]
    assert min(returns) > 9300  # the reachable maximum is ~9.36 per step over 1000 steps
    env = gym.make("Reacher-v5")
    expert = make_expert("ik", env)
    ik = np.mean([run_episode(env, expert, rng, 0.0, seed=s).total_return for s in range(10)])

    class Idle:
        def act(self, _env):
            return np.zeros(2, np.float32)

    idle = np.mean([run_episode(env, Idle(), rng, 0.0, seed=s).total_return for s in range(10)])
    assert ik > -6.0 and ik > idle + 2.0  # reaches the target; doing nothing costs the distance


def test_unknown_expert_lists_what_is_supported():
    import gymnasium as gym

    from policyrt.sim.experts import make_expert

    with pytest.raises(ValueError, match=r"lqr \(InvertedPendulum-v5, InvertedDoublePendulum-v5\); ik \(Reacher-v5\)"):
        make_expert("mpc", gym.make("Reacher-v5"))


def test_collect_to_a_relative_directory(tmp_path, monkeypatch):
    from policyrt.episodes import load_dataset

    monkeypatch.chdir(tmp_path)
    assert main(["sim", "collect", "--episodes", "1", "--out", "data/rel"]) == 0
    assert len(load_dataset("data/rel").episodes) == 1


def test_collect_again_replaces_the_dataset(tmp_path):
    from policyrt.episodes import load_dataset

    out = tmp_path / "again"
    assert main(["sim", "collect", "--episodes", "1", "--out", str(out)]) == 0
    assert main(["sim", "collect", "--episodes", "2", "--out", str(out)]) == 0
    assert len(load_dataset(out).episodes) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["again"]  # no temporary directory left behind


def test_random_mix_makes_weaker_episodes_and_labels_follow_the_choice(tmp_path):
    """--random-mix 0,1: the second episode applies uniformly random actions, so it falls early, and
    its stored action differs from the expert's clean one; each label choice gives what it says."""
    from policyrt.episodes import load_dataset
    from policyrt.policies.sequence_data import episode_arrays

    out = tmp_path / "mix"
    assert main(["sim", "collect", "--env", "InvertedPendulum-v5", "--episodes", "2", "--random-mix", "0,1",
                 "--out", str(out)]) == 0
    dataset = load_dataset(out)
    expert_ep, random_ep = dataset.episodes
    assert expert_ep.total_return == 1000 and random_ep.total_return < 100
    np.testing.assert_array_equal(expert_ep.actions, expert_ep.expert_actions)
    assert np.abs(random_ep.actions - random_ep.expert_actions).mean() > 0.1
    applied, expert = episode_arrays(dataset, "applied"), episode_arrays(dataset, "expert")
    np.testing.assert_array_equal(applied[1]["label"], random_ep.actions)
    np.testing.assert_array_equal(expert[1]["label"], random_ep.expert_actions)
    behaviour = episode_arrays(dataset, "behaviour")  # w = 1: the random policy's mean, mid-range (0 here)
    np.testing.assert_array_equal(episode_arrays(dataset, "auto")[1]["label"], behaviour[1]["label"])
    np.testing.assert_array_equal(behaviour[0]["label"], expert_ep.expert_actions)
    np.testing.assert_array_equal(behaviour[1]["label"], np.zeros_like(random_ep.actions))
    assert json.loads((out / "dataset.json").read_text())["random_mix"] == [0.0, 1.0]
    with pytest.raises(ValueError, match="labels must be one of auto, applied, expert, behaviour"):
        episode_arrays(dataset, "clean")


def test_random_mix_outside_zero_one_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["sim", "collect", "--random-mix", "0,1.5", "--out", str(tmp_path / "x")])
    assert "random-mix weights must lie in [0, 1]" in capsys.readouterr().err


def test_expert_gain_levels_give_weaker_controllers_and_behaviour_labels_scale_with_them(tmp_path):
    from policyrt.episodes import load_dataset
    from policyrt.policies.sequence_data import episode_arrays

    out = tmp_path / "gain"
    assert main(["sim", "collect", "--env", "InvertedPendulum-v5", "--episodes", "2", "--expert-gain", "1,0",
                 "--out", str(out)]) == 0
    dataset = load_dataset(out)
    full, none = dataset.episodes
    assert full.total_return == 1000 and none.total_return < 100  # gain 0 pushes nothing: the pole falls
    np.testing.assert_array_equal(none.actions, np.zeros_like(none.actions))
    labels = episode_arrays(dataset, "behaviour")
    np.testing.assert_array_equal(labels[0]["label"], full.expert_actions)
    np.testing.assert_array_equal(labels[1]["label"], np.zeros_like(none.actions))


def test_train_on_a_missing_dataset_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["train", "dt", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "ckpt")]) == 2
    err = capsys.readouterr().err
    assert "nowhere has no dataset.json" in err and "Traceback" not in err


def test_target_return_defaults_to_the_best_in_the_data_and_can_be_set(small_dataset, tmp_path):
    base = ["train", "xlstm", "--data", str(small_dataset), "--steps", "1", "--batch-size", "1", "--window", "8",
            "--embedding-dim", "32", "--num-blocks", "1", "--num-heads", "2"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    assert main([*base, "--out", str(tmp_path / "b"), "--target-return", "640"]) == 0
    targets = [json.loads((tmp_path / n / "config.json").read_text())["config"]["target_return"] for n in "ab"]
    assert targets == [1000.0, 640.0]
