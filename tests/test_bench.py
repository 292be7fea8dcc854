"""`policyrt bench` runs every variant in one run and reports ratios (no timing is asserted)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from policyrt.cli import main  # noqa: E402


@pytest.mark.parametrize("bundle, baseline", [("tiny_bundle", "xlstm_eager_step"), ("tiny_dt_bundle", "hf_dt_eager_forward")])
def test_bench_reports_all_variants_against_the_baseline(request, tmp_path, bundle, baseline):
    if baseline.startswith("hf"):
        pytest.importorskip("transformers")
    path = request.getfixturevalue(bundle)
    out = tmp_path / "bench.json"
    assert main(["bench", str(path), "--steps", "30", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["baseline"] == baseline
    assert set(report["results"]) == {"session_onnxruntime", baseline, "session_torch_reference"}
    assert report["results"][baseline]["speedup_vs_baseline_p50"] == 1.0
    assert all(r["samples"] == 30 and r["p50_us"] > 0 for r in report["results"].values())


def test_dt_bundle_verifies_and_keeps_int32_counters(tiny_dt_bundle):
    from policyrt.bundle import open_bundle
    from policyrt.runtime.verify import verify_backend

    bundle = open_bundle(tiny_dt_bundle)
    for backend in ("onnxruntime", "torch"):
        report = verify_backend(bundle, backend)
        assert report.ok, report.table()
    dtypes = {s.name: s.dtype for s in bundle.manifest.state}
    assert dtypes == {"rtg": "float32", "obs": "float32", "action": "float32", "timestep": "int32", "fill": "int32"}
