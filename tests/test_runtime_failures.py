"""Bundles that load but cannot run, and bundles that cannot load, against real `policyrt`
processes (issue 12): a step graph that fails at run time ends `policyrt run` with the safe
action, BYE and one line; `serve` and `serve --check` exit 2 with one line on every unloadable
bundle (a graph that fails at warm-up, a corrupt ONNX file, external data outside the bundle, a
bogus state dtype). The bundles are real: ONNX graphs built with the `onnx` package, manifests
written by policyrt.bundle.write_manifest, so each passes every check a bundle gets on open."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from wire_helpers import PATIENCE_S, ScriptedRobot, ipc_endpoint, pendulum_spec, python_env, reap_processes

from policyrt.bundle import write_manifest
from policyrt.protocol import MsgType, ObsFlag

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PENDULUM = ROOT / "bundles" / "inverted-pendulum-xlstm.policy"  # obs_dim 4, act_dim 1
ACT_FALLBACK = 1  # ACT flag bit (docs/PROTOCOL.md section 4)


@pytest.fixture(autouse=True)
def _reap():
    yield
    reap_processes()


def rewrite_manifest(bundle: Path, **changes) -> Path:
    """The bundle's manifest with `changes`, its checksums (and digest) written anew."""
    doc = json.loads((bundle / "manifest.json").read_text())
    doc.pop("files", None)
    doc.update(changes)
    (bundle / "bundle.sha256").unlink(missing_ok=True)
    write_manifest(bundle, doc)
    return bundle


def step_graph(extra_nodes=(), initializers=()) -> onnx.ModelProto:
    """A step graph of the pendulum's dims (one state tensor `h`) whose action is the first
    column of the observation reshaped to rows of 3 values, a row length computed from the data
    (0 x the sum of `reset` + 3) so that no shape inference can see it: ONNX Runtime loads the
    graph and refuses the Reshape of a [B, 4] observation at run time, for any batch."""
    batch = "batch"
    inputs = [
        helper.make_tensor_value_info("obs", TensorProto.FLOAT, [batch, 4]),
        helper.make_tensor_value_info("prev_action", TensorProto.FLOAT, [batch, 1]),
        helper.make_tensor_value_info("reward", TensorProto.FLOAT, [batch]),
        helper.make_tensor_value_info("target_return", TensorProto.FLOAT, [batch]),
        helper.make_tensor_value_info("reset", TensorProto.BOOL, [batch]),
        helper.make_tensor_value_info("state.h", TensorProto.FLOAT, [batch, 1]),
    ]
    outputs = [
        helper.make_tensor_value_info("action", TensorProto.FLOAT, [batch, 1]),
        helper.make_tensor_value_info("state.h.next", TensorProto.FLOAT, [batch, 1]),
    ]

    def ints(name, values):
        return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)

    nodes = [
        helper.make_node("Cast", ["reset"], ["reset_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["reset_f"], ["resets"], keepdims=0),
        helper.make_node("Mul", ["resets", "zero"], ["nothing"]),
        helper.make_node("Add", ["nothing", "three"], ["row_f"]),
        helper.make_node("Cast", ["row_f"], ["row"], to=TensorProto.INT64),
        helper.make_node("Unsqueeze", ["row", "axis0"], ["row1"]),
        helper.make_node("Concat", ["minus1", "row1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["obs", "shape"], ["rows"]),
        helper.make_node("Slice", ["rows", "start", "stop", "axis1"], ["action"]),
        helper.make_node("Identity", ["state.h"], ["state.h.next"]),
        *extra_nodes,
    ]
    inits = [
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("three", TensorProto.FLOAT, [], [3.0]),
        ints("axis0", [0]), ints("minus1", [-1]), ints("start", [0]), ints("stop", [1]), ints("axis1", [1]),
        *initializers,
    ]
    graph = helper.make_graph(nodes, "fails_at_run_time", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def bundle_of(model: onnx.ModelProto, out: Path, check: bool = True) -> Path:
    """A bundle around `model`: the pendulum's manifest with the graph's one state tensor."""
    if check:
        onnx.checker.check_model(model, full_check=True)
    out.mkdir(parents=True)
    (out / "policy.onnx").write_bytes(model.SerializeToString())
    shutil.copy(PENDULUM / "parity.json", out / "parity.json")
    doc = json.loads((PENDULUM / "manifest.json").read_text())
    doc.pop("files", None)
    doc.update(name=out.stem, state=[{"name": "h", "shape": [1], "dtype": "float32", "init": 0.0}])
    write_manifest(out, doc)
    return out


def failing_bundle(out: Path) -> Path:
    return bundle_of(step_graph(), out)


def external_data_bundle(out: Path) -> Path:
    """The graph's `zero` read from external data at ../../../../etc/hostname: outside the bundle."""
    outside = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    outside.ClearField("float_data")
    outside.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../../../../etc/hostname"), ("offset", "0"), ("length", "4")):
        entry = outside.external_data.add()
        entry.key, entry.value = key, value
    model = step_graph()
    inits = model.graph.initializer
    index = next(i for i, t in enumerate(inits) if t.name == "zero")
    inits[index].CopyFrom(outside)
    return bundle_of(model, out, check=False)


def corrupt_onnx_bundle(out: Path) -> Path:
    shutil.copytree(PENDULUM, out)
    (out / "policy.onnx").write_bytes(b"\x08\x07 this is not an ONNX protobuf " * 64)
    return rewrite_manifest(out)


def bogus_dtype_bundle(out: Path) -> Path:
    shutil.copytree(PENDULUM, out)
    state = json.loads((out / "manifest.json").read_text())["state"]
    state[0]["dtype"] = "float65"
    return rewrite_manifest(out, state=state)


def policyrt_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "policyrt.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=python_env(),
    )


_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")  # logging's time stamp


def policyrt_lines(stderr: str, command: str) -> list[str]:
    """The lines the command itself wrote; every other line must be a log line (time stamped):
    no traceback, no native ONNX Runtime log output. A failure must be exactly one such line."""
    ours = [line for line in stderr.splitlines() if line.startswith(f"policyrt {command}:")]
    others = [line for line in stderr.splitlines() if line not in ours and not _LOG_LINE.match(line)]
    assert not others, stderr
    return ours


def test_an_inference_failure_in_lockstep_sends_the_safe_action_and_bye(tmp_path):
    bundle = failing_bundle(tmp_path / "fails.policy")
    endpoint = ipc_endpoint()
    robot = ScriptedRobot(endpoint, pendulum_spec())
    try:
        proc = policyrt_cli("run", str(bundle), "--connect", endpoint, "--robot-timeout", "60")
        robot.accept()
        seq = robot.obs(np.zeros(4, np.float32), flags=ObsFlag.RESET)
        act = robot.recv()
        assert act.type is MsgType.ACT and act.ack == seq, act
        assert act.flags & ACT_FALLBACK and act.values.tolist() == [0.0], "the safe action, flagged FALLBACK"
        assert robot.recv().type is MsgType.BYE, "then BYE, not the robot's timeout"
        _, stderr = proc.communicate(timeout=PATIENCE_S)
    finally:
        robot.close()
    assert proc.returncode == 1, stderr
    (line,) = policyrt_lines(stderr, "run")
    assert str(bundle) in line and "inference failed at tick 0" in line and "Reshape" in line, line


def test_an_inference_failure_at_the_real_time_warm_up_is_one_line(tmp_path):
    bundle = failing_bundle(tmp_path / "fails.policy")
    proc = policyrt_cli("run", str(bundle), "--connect", ipc_endpoint(), "--mode", "realtime", "--duration", "1")
    _, stderr = proc.communicate(timeout=PATIENCE_S)
    assert proc.returncode == 2, stderr
    (line,) = stderr.splitlines()
    assert line.startswith("policyrt run: ") and str(bundle) in line and "inference failed at warm-up" in line, line


UNLOADABLE = {
    "fails-at-warm-up": failing_bundle,
    "corrupt-onnx": corrupt_onnx_bundle,
    "external-data": external_data_bundle,
    "bogus-dtype": bogus_dtype_bundle,
}


@pytest.mark.parametrize("check", [True, False], ids=["serve --check", "serve"])
@pytest.mark.parametrize("kind", UNLOADABLE)
def test_serve_exits_2_with_one_line_on_an_unloadable_bundle(tmp_path, kind, check):
    """docs/DAEMON.md promises exit 2 (RestartPreventExitStatus=2: no restart loop) for a bundle
    that cannot run; these exited 1 with a traceback."""
    bundle = UNLOADABLE[kind](tmp_path / f"{kind}.policy")
    config = tmp_path / "controller.toml"
    config.write_text(f'bundle = "{bundle}"\nrobots = ["{ipc_endpoint()}"]\nrate_hz = 50\n')
    proc = policyrt_cli("serve", "--config", str(config), *(["--check"] if check else []))
    _, stderr = proc.communicate(timeout=PATIENCE_S)
    assert proc.returncode == 2, stderr
    (line,) = policyrt_lines(stderr, "serve")
    assert f"{kind}.policy" in line, line


def copy_without_range(src: Path, dst: Path) -> Path:
    """A copy of a shipped bundle whose manifest records no observation range."""
    shutil.copytree(src, dst)
    doc = json.loads((dst / "manifest.json").read_text())
    for key in ("obs_low", "obs_high"):
        doc.pop(key, None)
    (dst / "manifest.json").write_text(json.dumps(doc))
    return rewrite_manifest(dst)


def run_huge_observation(bundle: Path, tmp_path: Path, *flags: str) -> tuple[list, dict, str]:
    """`policyrt run` against a scripted robot that sends one 3e38 among small observations;
    returns the ACT flags of the three answers, the --results JSON and stderr."""
    endpoint, results = ipc_endpoint(), tmp_path / "results.json"
    robot = ScriptedRobot(endpoint, pendulum_spec())
    try:
        proc = policyrt_cli("run", str(bundle), "--connect", endpoint, "--results", str(results), *flags)
        robot.accept()
        answers = []
        for step, first in enumerate((0.01, 3e38, 0.01)):
            seq = robot.obs([first, 0, 0, 0], flags=ObsFlag.RESET if step == 0 else 0, step=step)
            act = robot.recv()
            assert act.type is MsgType.ACT and act.ack == seq and np.isfinite(act.values).all(), act
            answers.append(act.flags)
        robot.send(robot.enc.control(MsgType.BYE))
        _, stderr = proc.communicate(timeout=PATIENCE_S)
    finally:
        robot.close()
    assert proc.returncode == 0, stderr
    return answers, json.loads(results.read_text()), stderr


def test_lockstep_resets_the_state_a_huge_observation_poisoned(tmp_path):
    answers, results, _ = run_huge_observation(PENDULUM, tmp_path, "--obs-range-factor", "0")
    assert answers == [0, ACT_FALLBACK, 0], "one fallback, then the policy's own action again"
    assert results["state_resets"] == 1 and results["nonfinite_actions"] == 1


def test_lockstep_guards_against_a_huge_observation(tmp_path):
    answers, results, _ = run_huge_observation(PENDULUM, tmp_path)
    assert answers == [0, ACT_FALLBACK, 0]
    assert results["obs_range_fallbacks"] == 1 and results["state_resets"] == 0 and results["nonfinite_actions"] == 0


def test_run_and_serve_check_say_once_that_a_bundle_without_a_range_is_unguarded(tmp_path):
    bare = copy_without_range(PENDULUM, tmp_path / "bare.policy")
    answers, results, stderr = run_huge_observation(bare, tmp_path)
    assert stderr.count("observation guard off: the bundle records no observation range") == 1, stderr
    assert answers == [0, ACT_FALLBACK, 0] and results["state_resets"] == 1
    config = tmp_path / "controller.toml"
    config.write_text(f'bundle = "{bare}"\nrobots = ["{ipc_endpoint()}"]\nrate_hz = 50\n')
    proc = policyrt_cli("serve", "--config", str(config), "--check")
    stdout, stderr = proc.communicate(timeout=PATIENCE_S)
    assert proc.returncode == 0, stderr
    assert "OK" in stdout and "observation guard off: the bundle records no observation range" in stdout
