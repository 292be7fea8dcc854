"""IREE backend, build and verify on the real compiler and runtime, on copies of the shipped bundles.

The step graph is compiled once per test session (batch 1 and 2 of the reacher xLSTM); tests that change
an artifact, its stamp or the bundle work on their own copy of that directory.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("iree.runtime")
pytest.importorskip("iree.compiler")

import policyrt.runtime as runtime  # noqa: E402
from policyrt.bundle import open_bundle, write_manifest  # noqa: E402
from policyrt.cli import main  # noqa: E402
from policyrt.runtime import iree_build  # noqa: E402
from policyrt.runtime.iree_artifacts import (  # noqa: E402
    ArtifactError,
    aligned_empty,
    artifact_path,
    target_cpu_id,
    this_cpu,
)
from policyrt.runtime.stamps import stamp_path  # noqa: E402
from policyrt.runtime.verify import parity_inputs, replay, slot_passes, verify_backend  # noqa: E402

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
XLSTM = BUNDLES / "reacher-xlstm.policy"
QUIET = dict(echo=lambda *_: None)
ORIN_CPUINFO = "processor\t: 0\nBogoMIPS\t: 62.50\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU part\t: 0xd42\n"


@pytest.fixture(scope="session")
def compiled(tmp_path_factory) -> Path:
    """A copy of the reacher xLSTM bundle with IREE artifacts for this CPU at batch 1 and 2, unverified."""
    path = tmp_path_factory.mktemp("iree") / XLSTM.name
    shutil.copytree(XLSTM, path)
    bundle = open_bundle(path)
    for batch in (1, 2):
        iree_build.build_artifact(bundle, batch, **QUIET)
    return path


@pytest.fixture(scope="session")
def verified(compiled, tmp_path_factory) -> Path:
    """`compiled` after verify passed on both artifacts (a copy: `compiled` stays unverified)."""
    path = tmp_path_factory.mktemp("iree-verified") / XLSTM.name
    shutil.copytree(compiled, path)
    for batch in (1, 2):
        assert verify_backend(open_bundle(path), "iree", batch_size=batch).ok
    return path


@pytest.fixture()
def own_copy(verified, tmp_path) -> Path:
    path = tmp_path / XLSTM.name
    shutil.copytree(verified, path)
    return path


def test_verify_replays_parity_within_tolerance_and_stamps_the_artifact(compiled, tmp_path):
    path = tmp_path / XLSTM.name
    shutil.copytree(compiled, path)
    report = verify_backend(open_bundle(path), "iree")
    assert report.ok and report.batch == 1 and report.tolerance == open_bundle(path).parity()["tolerance"]
    artifact = artifact_path(path, this_cpu(), 1)
    assert report.stamp == str(stamp_path(artifact))
    stamp = json.loads(stamp_path(artifact).read_text())
    assert stamp["cpu"] == this_cpu() and stamp["batch"] == 1 and stamp["errors"]["action"] <= 1e-5
    assert not stamp_path(artifact_path(path, this_cpu(), 2)).exists()  # verify checks one artifact


def test_the_build_records_compiler_flags_and_cpu_and_keeps_the_bundle_valid(compiled):
    bundle = open_bundle(compiled)  # would raise if engines/ or the record broke the bundle's checksums
    record = bundle.manifest.raw["engines"][artifact_path(compiled, this_cpu(), 2).name]
    assert record["backend"] == "iree" and record["batch"] == 2 and record["cpu"] == this_cpu()
    assert record["compiler"].startswith("iree-base-compiler 3.") and "--iree-llvmcpu-target-cpu=host" in record["flags"]
    assert "--iree-opt-level=O3" not in record["flags"]  # batch 1 only: slower for every larger batch
    one = bundle.manifest.raw["engines"][artifact_path(compiled, this_cpu(), 1).name]
    assert "--iree-opt-level=O3" in one["flags"]
    assert record["bundle_digest"] == bundle.digest
    assert not list((compiled / "engines").glob("*.tmp"))


def test_session_matches_onnxruntime_step_for_step_with_resets(verified):
    inputs = parity_inputs(open_bundle(verified).parity())
    with runtime.load(verified, backend="iree", batch_size=2) as iree, \
            runtime.load(verified, backend="onnxruntime", batch_size=2) as ort:
        for t in range(inputs["obs"].shape[0]):
            if t and inputs["reset"][t].any():
                iree.reset(inputs["reset"][t])
                ort.reset(inputs["reset"][t])
            got = iree.step(inputs["obs"][t], inputs["reward"][t], inputs["prev_action"][t])
            want = ort.step(inputs["obs"][t], inputs["reward"][t], inputs["prev_action"][t])
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        for name, value in ort.state().items():
            np.testing.assert_allclose(iree.state()[name], value, atol=1e-5 * max(1.0, np.abs(value).max()), rtol=0)


def test_reset_state_rewrites_only_the_masked_slots(verified):
    manifest = open_bundle(verified).manifest
    with runtime.load(verified, backend="iree", batch_size=2) as session:
        for _ in range(5):
            session.step(np.ones((2, manifest.obs_dim), np.float32))
        before = session.state()
        session.reset(np.array([False, True]))
        after = session.state()
    assert (before["block0.C"][1] != 0).any()  # the steps moved the state off its init
    for spec in manifest.state:
        np.testing.assert_array_equal(after[spec.name][0], before[spec.name][0])
        assert (after[spec.name][1] == spec.init).all()


def test_reset_state_clears_a_nan_the_graph_cannot(verified):
    manifest = open_bundle(verified).manifest
    with runtime.load(verified, backend="iree", batch_size=1) as session:
        session.step(np.full(manifest.obs_dim, np.nan, np.float32))
        assert np.isnan(session.state()["block0.C"]).any()
        session.reset()
        assert all(np.isfinite(v).all() for v in session.state().values())
        assert np.isfinite(session.step(np.zeros(manifest.obs_dim, np.float32))).all()


def test_host_buffers_imported_by_the_runtime_are_64_byte_aligned(verified):
    with runtime.load(verified, backend="iree") as session:
        backend = session.backend
        assert all(a.ctypes.data % 64 == 0 for a in (backend._host, backend._reset, backend.action, session.backend.action))
        assert all(np.shares_memory(view, backend._host) for name, view in backend.inputs.items() if name != "reset")
    for shape in [(1,), (3, 7), (16, 15)]:
        assert aligned_empty(shape, np.float32).ctypes.data % 64 == 0


def test_an_unverified_artifact_is_refused_naming_verify(compiled):
    with pytest.raises(ArtifactError, match=r"has not passed verify.*policyrt verify .* --backend iree --batch 2"):
        runtime.load(compiled, backend="iree", batch_size=2)


def test_a_batch_without_an_artifact_is_refused_naming_build_engine(verified):
    with pytest.raises(ArtifactError, match=r"at batch 3 .*build-engine .* --backend iree --batch 3"):
        runtime.load(verified, backend="iree", batch_size=3)


def test_another_cpu_is_refused(verified, monkeypatch):
    monkeypatch.setattr("policyrt.runtime.iree_backend.this_cpu", lambda: "aarch64 cortex-a78ae")
    with pytest.raises(ArtifactError, match=r"no IREE artifact for this CPU \(aarch64 cortex-a78ae\)"):
        runtime.load(verified, backend="iree")


def test_a_stamp_from_another_cpu_is_refused(own_copy):
    stamp = stamp_path(artifact_path(own_copy, this_cpu(), 1))
    doc = json.loads(stamp.read_text())
    stamp.write_text(json.dumps({**doc, "cpu": "x86_64 Some Other CPU"}))
    with pytest.raises(ArtifactError, match="verified with cpu 'x86_64 Some Other CPU'"):
        runtime.load(own_copy, backend="iree")


def test_a_changed_artifact_is_refused(own_copy):
    artifact = artifact_path(own_copy, this_cpu(), 1)
    artifact.write_bytes(artifact.read_bytes() + b"\0")
    with pytest.raises(ArtifactError, match="changed since it passed verify"):
        runtime.load(own_copy, backend="iree")


def test_an_artifact_of_an_older_bundle_is_refused_naming_the_rebuild(own_copy):
    doc = json.loads((own_copy / "manifest.json").read_text())
    write_manifest(own_copy, {**doc, "target_return": doc["target_return"] + 1.0})
    with pytest.raises(ArtifactError, match=r"another version of this bundle.*build-engine .* --backend iree --batch 1"):
        runtime.load(own_copy, backend="iree")


def test_an_artifact_of_another_calling_convention_is_refused(own_copy):
    doc = json.loads((own_copy / "manifest.json").read_text())
    doc["engines"][artifact_path(own_copy, this_cpu(), 1).name]["abi"] = 0
    (own_copy / "manifest.json").write_text(json.dumps(doc))  # `engines` is outside the digest
    with pytest.raises(ArtifactError, match=r"calling convention 0.*rebuild it: policyrt build-engine"):
        runtime.load(own_copy, backend="iree")


def test_the_action_becomes_an_in_place_argument_and_an_unexpected_module_is_refused():
    mlir = ("func.func @step(%arg0: !torch.vtensor<[1,3],f32>, %arg1: !torch.vtensor<[1,5],f32>) -> "
            "(!torch.vtensor<[1,2],f32>, !torch.vtensor<[1,5],f32>) attributes {x} {\n"
            "    return %7, %9 : !torch.vtensor<[1,2],f32>, !torch.vtensor<[1,5],f32>\n  }")
    out = iree_build.action_in_place(mlir)
    assert "%arg2: !torch.tensor<[1,2],f32>) -> !torch.vtensor<[1,5],f32> attributes" in out
    assert "torch.overwrite.tensor.contents %7 overwrites %arg2" in out and "return %9 : !torch.vtensor<[1,5],f32>" in out
    with pytest.raises(iree_build.IreeBuildError, match="expected one of each"):
        iree_build.action_in_place(mlir.replace("func.func @step", "func.func @main"))


def test_a_compile_failure_is_one_line_and_writes_nothing(compiled, tmp_path, monkeypatch, capsys):
    path = tmp_path / XLSTM.name
    shutil.copytree(compiled, path)
    manifest = (path / "manifest.json").read_text()
    monkeypatch.setattr(iree_build, "COMPILE_FLAGS", ("--iree-no-such-flag",))
    assert main(["build-engine", str(path), "--backend", "iree", "--batch", "4"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("build-engine failed: iree-compile failed for") and "\n" not in err
    assert (path / "manifest.json").read_text() == manifest
    assert not [p for p in (path / "engines").iterdir() if "-b4" in p.name]


@pytest.mark.parametrize("module", ["iree.compiler", "onnx"])
def test_a_missing_compiler_names_the_extra(compiled, tmp_path, monkeypatch, capsys, module):
    monkeypatch.setitem(sys.modules, module, None)
    assert main(["build-engine", str(compiled), "--backend", "iree", "--batch", "5"]) == 1
    err = capsys.readouterr().err.strip()
    assert "pip install 'policyrt[iree]'" in err and "\n" not in err


def test_a_missing_runtime_names_the_extra(verified, monkeypatch):
    monkeypatch.setitem(sys.modules, "iree.runtime", None)
    with pytest.raises(ImportError, match=r"pip install 'policyrt\[iree\]'"):
        runtime.load(verified, backend="iree")


def test_verify_cli_passes_and_build_flags_are_refused_for_tensorrt(compiled, tmp_path, capsys):
    path = tmp_path / XLSTM.name
    shutil.copytree(compiled, path)
    assert main(["verify", str(path), "--backend", "iree", "--batch", "2"]) == 0
    assert "PASS" in capsys.readouterr().out
    assert main(["build-engine", str(path), "--batch", "2"]) == 1
    assert "apply to --backend iree only" in capsys.readouterr().err


def test_cross_compile_for_a_jetson_orin_compiles(compiled, tmp_path):
    path = tmp_path / XLSTM.name
    shutil.copytree(compiled, path)
    out = iree_build.build_artifact(open_bundle(path), 1, "cortex-a78ae", **QUIET)
    assert out.name == "iree-aarch64-cortex-a78ae-b1.vmfb" and out.stat().st_size > 0
    record = open_bundle(path).manifest.raw["engines"][out.name]
    assert record["target_triple"] == "aarch64-unknown-linux-gnu" and record["cpu"] == "aarch64 cortex-a78ae"
    assert "--iree-llvmcpu-target-cpu=cortex-a78ae" in record["flags"]


def test_an_orin_recognizes_the_artifact_cross_compiled_for_it():
    assert this_cpu(ORIN_CPUINFO, "aarch64") == "aarch64 cortex-a78ae" == target_cpu_id("cortex-a78ae", None)
    assert this_cpu("model name\t: AMD EPYC 7763\n", "x86_64") == "x86_64 AMD EPYC 7763"


def test_slot_passes_cover_every_recorded_slot():
    assert slot_passes(2, 2) == [[0, 1]]
    assert slot_passes(2, 1) == [[0], [1]]
    assert slot_passes(3, 2) == [[0, 1], [2, 0]]
    assert slot_passes(2, 5) == [[0, 1, 0, 1, 0]]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["reacher-dt.policy", "double-pendulum-xlstm.policy"])
def test_other_shipped_bundles_verify(name, tmp_path):
    """The DT carries int32 counters: a second carry."""
    path = tmp_path / name
    shutil.copytree(BUNDLES / name, path)
    iree_build.build_artifact(open_bundle(path), 2, **QUIET)
    assert verify_backend(open_bundle(path), "iree", batch_size=2).ok
    backend = runtime.make_backend(open_bundle(path), "iree", 2)
    inputs = parity_inputs(open_bundle(path).parity())
    assert np.isfinite(replay(backend, inputs)).all()


def test_auto_takes_a_verified_artifact_and_otherwise_says_once_why_not(verified, compiled, capsys):
    with runtime.load(verified) as session:
        assert session.backend_name == "iree"
    assert "backend auto: iree" in capsys.readouterr().err
    for _ in range(2):
        with runtime.load(compiled, batch_size=2) as session:
            assert session.backend_name == "onnxruntime"
    err = capsys.readouterr().err
    assert err.count("backend auto: onnxruntime") == 1 and "has not passed verify" in err
    with runtime.load(verified, intra_op_threads=2) as session:  # ONNX Runtime's options: its backend
        assert session.backend_name == "onnxruntime"
    with runtime.load(BUNDLES / "reacher-dt.policy") as session, runtime.load(XLSTM) as plain:
        assert session.backend_name == plain.backend_name == "onnxruntime"
    assert capsys.readouterr().err == ""  # nothing built for them: the default, nothing to say


@pytest.mark.parametrize("batch", [1, 3])
def test_verify_at_another_batch_replays_every_recorded_slot(batch):
    """ONNX Runtime at a batch other than parity.json's: every recorded slot replayed in passes and compared
    with its own reference (a slot compared with another's would be off by far more than 1e-5)."""
    report = verify_backend(open_bundle(XLSTM), "onnxruntime", batch_size=batch)
    assert report.ok and report.batch == batch and report.outputs[0].max_abs < 1e-5


def test_a_failing_step_is_one_inference_error(verified):
    from policyrt.runtime.backend import InferenceError

    with runtime.load(verified, backend="iree") as session:
        backend = session.backend
        backend._state = [backend._host_views[0]]  # a host buffer where the carry belongs: the module refuses it
        with pytest.raises(InferenceError, match=r"^iree step failed: .*") as caught:
            session.step(np.zeros(session.manifest.obs_dim, np.float32))
    assert "\n" not in str(caught.value)


def test_a_graph_off_the_manifest_is_refused_before_compiling(tmp_path, capsys):
    path = tmp_path / XLSTM.name
    shutil.copytree(XLSTM, path)
    doc = json.loads((path / "manifest.json").read_text())
    doc["state"][1]["shape"] = [2, 64, 63]
    write_manifest(path, doc)
    assert main(["build-engine", str(path), "--backend", "iree"]) == 1
    err = capsys.readouterr().err.strip()
    assert "policy.onnx" in err and "state.block0.C" in err and "\n" not in err
    assert not (path / "engines").exists() or not list((path / "engines").iterdir())
