"""The six shipped bundles (xLSTM and DT for three MuJoCo tasks): intact, small, reproducible from the
commands in their manifests, verified against parity.json, and -- in closed loop through a sim server
process and a controller process over ipc -- as good as the scripted expert on a seeded episode,
and measurably worse when asked for a low return (return conditioning works)."""

from __future__ import annotations

import pytest
from conftest import ROOT

# bundle stem -> (environment, a low commanded return: about what the poor data episodes reached)
SHIPPED = {
    "inverted-pendulum": ("InvertedPendulum-v5", 20.0),
    "double-pendulum": ("InvertedDoublePendulum-v5", 1000.0),
    "reacher": ("Reacher-v5", -30.0),
}
BUNDLES = [(f"{stem}-{kind}", env, low) for stem, (env, low) in SHIPPED.items() for kind in ("xlstm", "dt")]
IDS = [name for name, _, _ in BUNDLES]
MAX_BYTES = 5 * 1024 * 1024


def bundle_path(name: str):
    path = ROOT / "bundles" / f"{name}.policy"
    if not path.exists():
        pytest.fail(f"{path} is missing: rebuild it with scripts/make_bundles.sh")
    return path


@pytest.mark.parametrize(("name", "env_id", "low"), BUNDLES, ids=IDS)
def test_shipped_bundle_is_small_reproducible_and_verifies(name, env_id, low):
    from policyrt.bundle import open_bundle
    from policyrt.runtime.verify import verify_backend

    path = bundle_path(name)
    assert sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) < MAX_BYTES
    bundle = open_bundle(path)
    assert bundle.manifest.env_id == env_id and bundle.manifest.kind == name.rsplit("-", 1)[1]
    commands = bundle.manifest.raw["provenance"]["commands"]
    assert [c.split()[1] for c in commands] == ["sim", "train", "export"]
    assert "--expert-gain" in commands[0] or "--random-mix" in commands[0]  # trained from mixed-quality data
    report = verify_backend(bundle, "onnxruntime")
    assert report.ok, report.table()


@pytest.mark.slow
@pytest.mark.parametrize(("name", "env_id", "low"), BUNDLES, ids=IDS)
def test_closed_loop_episode_reaches_the_expert_and_a_low_target_lowers_the_return(name, env_id, low):
    from policyrt.sim.evaluate import Candidate, EvalConfig, evaluate
    from policyrt.sim.experts import close_to_expert

    bundle = str(bundle_path(name))
    report = evaluate(EvalConfig(env_id=env_id, episodes=1, seed=7), Candidate(bundle),
                      Candidate(bundle, target_return=low))
    asked_best, asked_low = (run["return"]["mean"] for run in report["runs"])
    expert = report["expert"]["return"]["mean"]
    assert close_to_expert(asked_best, expert), (asked_best, expert)
    assert asked_low < asked_best - 0.2 * abs(expert), (asked_low, asked_best)
    assert sum(report["runs"][0]["errors"]["controller"].values()) == 0


@pytest.mark.slow
def test_demo_command_runs_both_kinds_on_the_double_pendulum(tmp_path, capsys):
    from policyrt.cli import main

    assert main(["demo", "--episodes", "1", "--seed", "3", "--report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("the policy matches the expert") == 2 and "infer" in out
    assert {p.name for p in tmp_path.iterdir()} == {"double-pendulum-xlstm", "double-pendulum-dt"}
    assert (tmp_path / "double-pendulum-dt" / "returns.png").exists()
