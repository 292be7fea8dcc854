"""`policyrt eval`: real server and controller processes over ipc, a tiny random-weight pendulum
bundle whose episodes end early at different times, the report files, the comparison, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from policyrt.cli import main

pytest.importorskip("gymnasium")
pytest.importorskip("torch")

PENDULUM = "InvertedPendulum-v5"
EPISODES, PARALLEL, MAX_STEPS = 7, 3, 60


@pytest.fixture(scope="module")
def falling_bundle(tmp_path_factory) -> Path:
    """A random-weight xLSTM that can barely push (bounds +-0.05): the pole falls on its own, after
    15-25 steps depending on the episode's initial state, so slots end at different times."""
    from conftest import tiny_policy

    from policyrt.export.bundle_export import export_policy

    policy = tiny_policy(obs_dim=4, act_dim=1, action_low=(-0.05,), action_high=(0.05,))
    doc = {"kind": "xlstm", "config": policy.config.to_dict(), "commands": ["(test fixture: random weights)"]}
    out = tmp_path_factory.mktemp("bundles") / "falling.policy"
    return export_policy(policy, doc, Path("random"), out, progress=lambda *_: None)


def eval_args(bundle, *extra) -> list[str]:
    return ["eval", str(bundle), "--env", PENDULUM, "--episodes", str(EPISODES), "--max-episode-steps", str(MAX_STEPS),
            *extra]


@pytest.fixture(scope="module")
def batched_run(falling_bundle, tmp_path_factory):
    """One evaluation with P=3 and its report directory, shared by the tests that read it."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("eval") / "report"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(eval_args(falling_bundle, "--parallel", str(PARALLEL), "--report", str(out))) == 0
    return json.loads((out / "report.json").read_text()), out, err.getvalue()


def test_every_episode_is_played_once_spread_over_slots_that_end_at_different_times(batched_run):
    report, _, _ = batched_run
    (run,) = report["runs"]
    episodes = run["episodes"]
    assert [e["index"] for e in episodes] == list(range(EPISODES))  # none lost, none counted twice
    assert run["env_steps"] == sum(e["length"] for e in episodes)
    assert all(e["terminated"] and e["length"] < MAX_STEPS for e in episodes)  # the pole fell
    assert len({e["length"] for e in episodes}) > 1  # ...at different times
    assert {e["slot"] for e in episodes} == set(range(PARALLEL))
    # the episode after the first three went to whichever slot ended first: slots restart on their own
    first_end = min(range(PARALLEL), key=lambda k: (episodes[k]["length"], k))
    assert episodes[PARALLEL]["slot"] == episodes[first_end]["slot"]
    assert report["seeds"] == [e["seed"] for e in episodes] and len(set(report["seeds"])) == EPISODES
    assert run["errors"] == {"controller": {}, "robot": {}} and run["fallbacks"] == 0


def test_the_harness_gets_each_episode_as_an_event_from_the_server_process(falling_bundle):
    """`policyrt sim serve --events`: one line per finished episode, handed to on_episode in the order
    the episodes ended, every one before closed_loop returns; the same episodes as the results."""
    from policyrt.sim.processes import closed_loop

    events = []
    server, controller = closed_loop(str(falling_bundle), PENDULUM, 4, num_envs=2, seeding="episode",
                                     env_args=[f"max_episode_steps={MAX_STEPS}"], on_episode=events.append)
    assert [e.pop("event") for e in events] == ["episode"] * 4
    assert events == server["episodes"] and sorted(e["index"] for e in events) == [0, 1, 2, 3]
    assert {e["slot"] for e in events} == {0, 1} and len(controller["episodes"]) == 4


def test_report_files_exist_and_parse(batched_run):
    report, out, progress = batched_run
    run = report["runs"][0]
    assert report["schema"] == 1 and report["parallel"] == PARALLEL and report["compare"] is None
    assert report["expert"]["available"] and len(report["expert"]["returns"]) == EPISODES
    assert report["expert"]["return"]["mean"] == MAX_STEPS  # the LQR expert balances to the limit
    assert run["return_vs_expert"] == pytest.approx(run["return"]["mean"] / MAX_STEPS)
    assert run["steps_per_s"] > 0
    for side, stages in (("controller", ("receive", "infer", "filter", "send", "respond")),
                         ("robot", ("answer", "env_step"))):
        assert set(run["latency_us"][side]) == set(stages)
        assert all(s["p50"] <= s["p90"] <= s["p99"] <= s["max"] for s in run["latency_us"][side].values())
    md = (out / "report.md").read_text()
    assert "| episode | seed |" in md and "expert return" in md and "| controller | infer |" in md
    for png in ("returns.png", "latency.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{EPISODES}/{EPISODES} episodes" in progress  # the progress indication


def test_same_seed_plays_the_same_episodes_whatever_the_parallelism(falling_bundle, batched_run):
    """P=1 goes through the classic one-environment session, P=3 through batched frames: with the
    same seed both play the same episodes, so the returns agree episode by episode."""
    from policyrt.sim.evaluate import Candidate, EvalConfig, evaluate

    report, _, _ = batched_run
    again = evaluate(EvalConfig(PENDULUM, EPISODES, parallel=1, max_episode_steps=MAX_STEPS), Candidate(str(falling_bundle)))
    one, three = again["runs"][0]["episodes"], report["runs"][0]["episodes"]
    assert [(e["seed"], e["length"]) for e in one] == [(e["seed"], e["length"]) for e in three]
    np.testing.assert_allclose([e["return"] for e in one], [e["return"] for e in three])
    assert again["expert"]["returns"] == report["expert"]["returns"]
    other = evaluate(EvalConfig(PENDULUM, EPISODES, parallel=PARALLEL, seed=1, max_episode_steps=MAX_STEPS),
                     Candidate(str(falling_bundle)))
    assert [e["length"] for e in other["runs"][0]["episodes"]] != [e["length"] for e in three]  # the seed matters


def test_compare_onnxruntime_and_torch_on_the_same_seeds_differ_by_nothing(falling_bundle, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(eval_args(falling_bundle, "--parallel", "2", "--compare-backend", "torch", "--report", str(out))) == 0
    report = json.loads((out / "report.json").read_text())
    a, b = report["runs"]
    assert (a["backend"], b["backend"]) == ("onnxruntime", "torch")
    cmp = report["compare"]
    assert cmp["same_lengths"] == EPISODES and len(cmp["return_diff"]) == EPISODES
    assert cmp["max_abs_return_diff"] < 1e-6 and abs(cmp["mean_return_diff"]) < 1e-6
    assert "difference (b - a)" in capsys.readouterr().out


def test_compare_target_return_commands_the_return_in_the_second_run_only(falling_bundle, tmp_path, capsys):
    """The plumbing of --target-return / --compare-target-return down to the controller's session
    (whether a trained policy obeys is checked on the shipped bundles, tests/test_shipped_policies.py)."""
    out = tmp_path / "target"
    assert main(eval_args(falling_bundle, "--compare-target-return", "-50", "--report", str(out))) == 0
    report = json.loads((out / "report.json").read_text())
    a, b = report["runs"]
    assert a["target_return"] is None and b["target_return"] == -50
    assert b["label"].endswith("target -50") and b["bundle"] == a["bundle"]
    assert "target -50" in capsys.readouterr().out


# --- bad input ------------------------------------------------------------------------------------


def refused(capsys, *words) -> str:
    assert main(list(words)) == 2
    return capsys.readouterr().err


def test_unknown_environment_is_named_with_the_ones_that_exist(falling_bundle, capsys):
    err = refused(capsys, "eval", str(falling_bundle), "--env", "InvertedPendulum-v9", "--episodes", "1")
    assert "unknown environment 'InvertedPendulum-v9'" in err and "InvertedDoublePendulum-v5" in err


def test_bundle_whose_dims_do_not_fit_the_environment_names_both(falling_bundle, capsys):
    err = refused(capsys, "eval", str(falling_bundle), "--env", "Reacher-v5", "--episodes", "1")
    assert "expects obs_dim=4, act_dim=1" in err and "Reacher-v5 has obs_dim=10, act_dim=2" in err


def test_missing_bundle_and_missing_comparison_bundle_are_named(falling_bundle, tmp_path, capsys):
    err = refused(capsys, "eval", str(tmp_path / "nope.policy"), "--env", PENDULUM, "--episodes", "1")
    assert "nope.policy: no such bundle" in err
    err = refused(capsys, "eval", str(falling_bundle), "--env", PENDULUM, "--episodes", "1", "--compare",
                  str(tmp_path / "other.policy"))
    assert "other.policy: no such bundle" in err


def test_impossible_counts_and_backends_are_refused(falling_bundle, capsys):
    assert "--episodes must be >= 1" in refused(capsys, "eval", str(falling_bundle), "--env", PENDULUM, "--episodes", "0")
    err = refused(capsys, "eval", str(falling_bundle), "--env", PENDULUM, "--episodes", "1", "--backend", "tpu")
    assert "unknown backend 'tpu'" in err
