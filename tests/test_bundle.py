"""Bundles are refused, naming the file, when a file is missing, changed, or the schema is unknown."""

from __future__ import annotations

import json
import shutil

import pytest

from policyrt.bundle import BundleError, open_bundle, pack_bundle


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
