"""The one dataset module (policyrt/episodes.py): npz round trip, safe replacement, board-side imports."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from policyrt.episodes import FIELDS, Dataset, Episode, load_dataset

META = {"env_id": "InvertedPendulum-v5", "expert": "lqr", "action_low": [-3.0], "action_high": [3.0]}


def episode(steps: int, offset: float) -> Episode:
    return Episode(
        observations=offset + np.arange(steps * 4, dtype=np.float32).reshape(steps, 4),
        actions=np.full((steps, 1), offset, np.float32),
        expert_actions=np.full((steps, 1), -offset, np.float32),
        rewards=np.arange(steps, dtype=np.float32),
        terminations=np.eye(1, steps, steps - 1, dtype=bool)[0],
        truncations=np.zeros(steps, bool),
    )


def test_npz_round_trip_keeps_every_field_and_episode_boundary(tmp_path):
    episodes = [episode(3, 0.5), episode(1, 1.5), episode(4, 2.5)]
    Dataset(episodes, META).save(tmp_path / "data", fmt="npz")
    loaded = load_dataset(tmp_path / "data")
    assert [len(e) for e in loaded.episodes] == [3, 1, 4]
    for ours, theirs in zip(episodes, loaded.episodes):
        for field in FIELDS:
            np.testing.assert_array_equal(getattr(ours, field), getattr(theirs, field))
    assert json.loads((tmp_path / "data" / "dataset.json").read_text())["format"] == "npz"
    assert loaded.returns().tolist() == [3.0, 0.0, 6.0]


def test_saving_replaces_a_previous_dataset_but_never_a_directory_holding_something_else(tmp_path):
    Dataset([episode(2, 0.0)], META).save(tmp_path / "data", fmt="npz")
    Dataset([episode(5, 0.0)], META).save(tmp_path / "data", fmt="npz")
    assert [len(e) for e in load_dataset(tmp_path / "data").episodes] == [5]

    other = tmp_path / "home"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a dataset"):
        Dataset([episode(2, 0.0)], META).save(other, fmt="npz")
    assert (other / "notes.txt").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["data", "home"]


def test_an_unknown_format_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset format 'csv'; use one of minari, npz"):
        Dataset([episode(2, 0.0)], META).save(tmp_path / "data", fmt="csv")
    assert list(tmp_path.iterdir()) == []


def test_the_dataset_and_the_episode_recorder_stay_board_side_clean():
    """The recorder writes npz on a board: importing it pulls no minari, gymnasium, torch or mujoco."""
    code = ("import sys, policyrt.episodes, policyrt.controllers.episode_recorder; "
            "bad = [m for m in ('minari', 'gymnasium', 'torch', 'mujoco') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
