"""Bundles are refused, naming the file, when a file is missing, changed, or the schema is unknown."""

from __future__ import annotations

import gc
import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest

from policyrt import runtime
from policyrt.bundle import (
    DIGEST_FILE,
    BundleError,
    bundle_digest,
    open_bundle,
    pack_bundle,
    sha256_file,
    write_manifest,
)
from policyrt.runtime.backend import InferenceError


@pytest.fixture()
def bundle_copy(tiny_bundle, tmp_path):
    return shutil.copytree(tiny_bundle, tmp_path / "copy.policy")


def test_missing_file_is_named(bundle_copy):
    (bundle_copy / "parity.json").unlink()
    with pytest.raises(BundleError, match="parity.json: listed in the manifest but missing"):
        open_bundle(bundle_copy)


def test_checksum_mismatch_is_named(bundle_copy):
    data = bytearray((bundle_copy / "policy.onnx").read_bytes())
    data[-10] ^= 0xFF
    (bundle_copy / "policy.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="policy.onnx: sha256 does not match"):
        open_bundle(bundle_copy)


def test_unknown_schema_version_is_refused(bundle_copy):
    doc = json.loads((bundle_copy / "manifest.json").read_text())
    doc["schema_version"] = 99
    (bundle_copy / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="manifest.json: unknown schema_version 99"):
        open_bundle(bundle_copy)


def test_missing_manifest_field_is_named(bundle_copy):
    doc = json.loads((bundle_copy / "manifest.json").read_text())
    del doc["obs_dim"]
    (bundle_copy / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="missing field 'obs_dim'"):
        open_bundle(bundle_copy)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="no such bundle"):
        open_bundle(tmp_path / "nothing.policy")
    (tmp_path / "junk.policy").write_text("not a tar")
    with pytest.raises(BundleError, match="not a bundle directory and not a tar"):
        open_bundle(tmp_path / "junk.policy")


def test_tar_round_trip(tiny_bundle, tmp_path):
    archive = pack_bundle(tiny_bundle, tmp_path / "tiny.policy.tar")
    bundle = open_bundle(archive)
    assert bundle.manifest.name == "tiny"
    assert bundle.onnx_path.is_file()


# --- issue 12: a manifest that cannot lie, files confined, .tar unpacked safely and removed ----------

SHIPPED = Path(__file__).resolve().parents[1] / "bundles" / "inverted-pendulum-xlstm.policy"  # obs 4, act 1


@pytest.fixture()
def shipped_copy(tmp_path):
    return Path(shutil.copytree(SHIPPED, tmp_path / "p.policy"))


def rewritten(bundle: Path, **changes) -> Path:
    """The manifest with `changes`, checksums and digest written to match (as write_manifest does)."""
    doc = json.loads((bundle / "manifest.json").read_text())
    doc.pop("files")
    write_manifest(bundle, {**doc, **changes})
    return bundle


def test_write_manifest_writes_the_digest_that_open_checks(shipped_copy):
    doc = json.loads((shipped_copy / "manifest.json").read_text())
    digest = write_manifest(shipped_copy, {k: v for k, v in doc.items() if k != "files"})
    assert (shipped_copy / DIGEST_FILE).read_text().strip() == digest == open_bundle(shipped_copy).digest
    assert digest == bundle_digest(json.loads((shipped_copy / "manifest.json").read_text()))
    doc["action_high"] = [30.0]  # a hand edit that every field check accepts
    (shipped_copy / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=r"p.policy/manifest.json: changed since it was written .*bundle.sha256"):
        open_bundle(shipped_copy)


def test_a_nan_bound_is_refused_naming_the_file_and_field(shipped_copy):
    """It was accepted, and `policyrt run` sent NaN in every ACT."""
    doc = json.loads((shipped_copy / "manifest.json").read_text())
    doc["action_low"] = [float("nan")]
    (shipped_copy / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError) as err:
        open_bundle(shipped_copy)
    assert str(err.value) == f"{shipped_copy}/manifest.json: action_low[0] is NaN: bounds must be finite (in float32)"


def test_a_file_listed_outside_the_bundle_is_refused_even_with_its_right_hash(shipped_copy):
    """`/etc/hostname` listed with its right sha256 was accepted and read."""
    hostname = Path("/etc/hostname")
    doc = json.loads((shipped_copy / "manifest.json").read_text())
    doc["files"][str(hostname)] = sha256_file(hostname)
    (shipped_copy / "manifest.json").write_text(json.dumps(doc))
    (shipped_copy / DIGEST_FILE).write_text(bundle_digest(doc))
    with pytest.raises(BundleError, match=r"files\['/etc/hostname'\] is an absolute path"):
        open_bundle(shipped_copy)


def test_a_sibling_directory_sharing_the_prefix_is_outside(shipped_copy):
    """Containment was a startswith on strings: p.policy-evil/ passed as inside p.policy/."""
    evil = shipped_copy.parent / "p.policy-evil"
    evil.mkdir()
    (evil / "x").write_text("x")
    os.symlink(evil / "x", shipped_copy / "x")
    doc = json.loads((shipped_copy / "manifest.json").read_text())
    doc["files"]["x"] = sha256_file(evil / "x")
    (shipped_copy / "manifest.json").write_text(json.dumps(doc))
    (shipped_copy / DIGEST_FILE).write_text(bundle_digest(doc))
    with pytest.raises(BundleError, match="p.policy/x: resolves outside the bundle directory"):
        open_bundle(shipped_copy)


def test_an_unlisted_file_is_refused_but_signatures_and_engines_may_be_there(shipped_copy):
    (shipped_copy / "signatures.json").write_text("{}")
    (shipped_copy / "engines").mkdir()
    (shipped_copy / "engines" / "x.plan").write_bytes(b"engine")
    open_bundle(shipped_copy)
    (shipped_copy / "reference" / "payload.so").write_bytes(b"\0")
    with pytest.raises(BundleError, match="reference/payload.so: not listed in the manifest's files"):
        open_bundle(shipped_copy)


def test_the_observation_range_is_read(shipped_copy):
    rewritten(shipped_copy, obs_low=[-1.0, -2.0, -3.0, -4.0], obs_high=[1, 2, 3, 4])
    manifest = open_bundle(shipped_copy).manifest
    assert manifest.obs_low.dtype == np.float32 and manifest.obs_low.tolist() == [-1, -2, -3, -4]
    assert manifest.obs_high.tolist() == [1, 2, 3, 4]
    rewritten(shipped_copy, obs_low=None, obs_high=None)
    assert open_bundle(shipped_copy).manifest.obs_low is None


def test_a_dim_the_graph_disagrees_with_is_refused_at_load(shipped_copy):
    """obs_dim 5 on a 4-dim graph loaded, then verify failed with "could not broadcast (2,4) into (2,5)"."""
    rewritten(shipped_copy, obs_dim=5, obs_low=None, obs_high=None)
    with pytest.raises(BundleError) as err:
        runtime.load(shipped_copy)
    assert str(err.value) == (f"{shipped_copy}/policy.onnx: step graph does not match the manifest: obs_dim: the manifest "
                              "makes obs [batch, 5], the graph's is [batch, 4]")


def test_a_corrupt_graph_is_one_bundle_error_naming_it(shipped_copy):
    (shipped_copy / "policy.onnx").write_bytes(b"\x08\x07 not an ONNX protobuf " * 64)
    rewritten(shipped_copy)
    with pytest.raises(BundleError, match=r"p.policy/policy.onnx: ONNX Runtime cannot load the step graph: .*Protobuf"):
        runtime.load(shipped_copy)


def failing_step_graph(path: Path) -> None:
    """The pendulum's contract (one state tensor h) with an action gathered from obs column 7, an index
    computed from the data (0 x the resets + 7) so that ONNX Runtime loads the graph and fails at run."""
    from onnx import TensorProto, helper, save

    def value(name, dtype, *dims):
        return helper.make_tensor_value_info(name, dtype, ["batch", *dims])

    f = TensorProto.FLOAT
    inputs = [value("obs", f, 4), value("prev_action", f, 1), value("reward", f), value("target_return", f),
              value("reset", TensorProto.BOOL), value("state.h", f, 1)]
    nodes = [helper.make_node("Cast", ["reset"], ["reset_f"], to=f),
             helper.make_node("ReduceSum", ["reset_f"], ["resets"], keepdims=0),
             helper.make_node("Mul", ["resets", "zero"], ["nothing"]),
             helper.make_node("Add", ["nothing", "seven"], ["column_f"]),
             helper.make_node("Cast", ["column_f"], ["column"], to=TensorProto.INT64),
             helper.make_node("Gather", ["obs", "column"], ["picked"], axis=1),
             helper.make_node("Unsqueeze", ["picked", "axis1"], ["action"]),
             helper.make_node("Identity", ["state.h"], ["state.h.next"])]
    inits = [helper.make_tensor("zero", f, [], [0.0]), helper.make_tensor("seven", f, [], [7.0]),
             helper.make_tensor("axis1", TensorProto.INT64, [1], [1])]
    graph = helper.make_graph(nodes, "fails_at_run", inputs, [value("action", f, 1), value("state.h.next", f, 1)], inits)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_a_failure_inside_run_is_one_inference_error(shipped_copy):
    pytest.importorskip("onnx")
    failing_step_graph(shipped_copy / "policy.onnx")
    rewritten(shipped_copy, state=[{"name": "h", "shape": [1], "dtype": "float32", "init": 0.0}])
    with runtime.load(shipped_copy) as session, pytest.raises(InferenceError) as err:
        session.step(np.zeros(4, np.float32))
    assert str(err.value).startswith("onnxruntime step failed: ") and "\n" not in str(err.value)


@pytest.fixture()
def own_tempdir(tmp_path, monkeypatch):
    """tempfile's directory for this test alone, so that what a bundle leaves there can be counted."""
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    return temp


def test_a_tar_bundle_leaves_no_copy_behind(shipped_copy, tmp_path, own_tempdir):
    """Every open of a .tar left a full copy in a policyrt-bundle-* folder."""
    archive = pack_bundle(shipped_copy, tmp_path / "p.policy.tar")
    bundle = open_bundle(archive)
    assert bundle.path.is_relative_to(own_tempdir) and (bundle.path / "policy.onnx").is_file()
    bundle.close()
    bundle.close()  # idempotent
    with open_bundle(archive) as bundle:
        assert list(own_tempdir.glob("policyrt-bundle-*"))
    assert not list(own_tempdir.iterdir())
    with runtime.load(archive) as session:
        session.step(np.zeros(4, np.float32))
    assert not list(own_tempdir.iterdir())
    open_bundle(archive)  # never closed: the finalizer removes it once the bundle is gone
    gc.collect()
    assert not list(own_tempdir.iterdir())


def gz_with_an_unlisted_zero_file(bundle: Path, archive: Path, size: int) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle, arcname=bundle.name)
        info = tarfile.TarInfo(f"{bundle.name}/zeros.bin")
        info.size = size
        with io.BufferedReader(ZeroStream(size)) as zeros:
            tar.addfile(info, zeros)
    return archive


class ZeroStream(io.RawIOBase):
    """`size` zero bytes, never held in memory."""

    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


@pytest.mark.parametrize("size", [pytest.param(8 << 20, id="8MiB"), pytest.param(300 << 20, id="300MiB", marks=pytest.mark.slow)])
def test_an_unlisted_member_of_a_tar_gz_is_refused_before_anything_is_extracted(shipped_copy, tmp_path, own_tempdir, size):
    """A .tar.gz carrying an unlisted 300 MiB file was extracted and accepted."""
    archive = gz_with_an_unlisted_zero_file(shipped_copy, tmp_path / "p.policy.tar.gz", size)
    with pytest.raises(BundleError) as err:
        open_bundle(archive)
    assert str(err.value) == (f"{archive}: member 'p.policy/zeros.bin' is not listed in the manifest's files "
                              "(refused before extracting anything)")
    assert not list(own_tempdir.iterdir())


def test_info_shows_the_digest(shipped_copy, capsys):
    from policyrt.cli import main

    assert main(["info", str(shipped_copy)]) == 0
    assert f"digest      sha256 {open_bundle(shipped_copy).digest}" in capsys.readouterr().out
