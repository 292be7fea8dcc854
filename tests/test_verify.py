"""verify replays parity.json on a backend and fails loudly, naming the first step that drifted."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from policyrt.arrays import decode_array, encode_array  # noqa: E402
from policyrt.bundle import open_bundle, write_manifest  # noqa: E402
from policyrt.runtime.verify import verify_backend  # noqa: E402


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_verify_passes_on_both_backends(tiny_bundle, backend):
    report = verify_backend(open_bundle(tiny_bundle), backend)
    assert report.ok, report.table()
    assert report.steps >= 200 and report.batch == 2


def test_verify_reports_drift_and_its_first_step(tiny_bundle, tmp_path):
    copy = shutil.copytree(tiny_bundle, tmp_path / "drift.policy")
    parity = json.loads((copy / "parity.json").read_text())
    actions = decode_array(parity["reference"]["action"]).copy()
    actions[123, 1, 0] += 1e-3  # the reference now disagrees from step 123 on
    parity["reference"]["action"] = encode_array(actions)
    (copy / "parity.json").write_text(json.dumps(parity))
    doc = json.loads((copy / "manifest.json").read_text())
    write_manifest(copy, {k: v for k, v in doc.items() if k != "files"})
    report = verify_backend(open_bundle(copy), "onnxruntime")
    assert not report.ok
    action = report.outputs[0]
    assert action.name == "action" and action.first_step_over == 123
    assert np.isclose(action.max_abs, 1e-3, rtol=1e-2)
    assert "FAIL from step 123" in report.table()


def test_cli_verify_exit_codes(tiny_bundle, tmp_path):
    from policyrt.cli import main

    assert main(["verify", str(tiny_bundle)]) == 0
    assert main(["verify", str(tmp_path / "missing.policy")]) == 1
