"""`policyrt compare`: drift of a bundle against its original model, printed and plotted."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from policyrt.cli import main  # noqa: E402


@pytest.mark.parametrize("inputs", ["random", "recorded"])
def test_compare_against_the_checkpoint(tiny_bundle, tiny_checkpoint, tmp_path, capsys, inputs):
    plot, report = tmp_path / "drift.png", tmp_path / "drift.json"
    code = main(["compare", str(tiny_bundle), "--reference", str(tiny_checkpoint), "--inputs", inputs,
                 "--steps", "200", "--plot", str(plot), "--json", str(report)])
    assert code == 0
    assert "first step over 1e-05: none" in capsys.readouterr().out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads(report.read_text())
    assert doc["max_abs"] <= 1e-5 and len(doc["drift"]) == (200 if inputs == "random" else 256)


def test_compare_fails_against_a_different_model(tiny_bundle, tmp_path, capsys):
    from conftest import tiny_policy

    from policyrt.policies.checkpoint import save_checkpoint

    other = save_checkpoint(tiny_policy(seed=9), tmp_path / "other")
    assert main(["compare", str(tiny_bundle), "--reference", str(other), "--steps", "50"]) == 1
    assert "first step over 1e-05: 0" in capsys.readouterr().out


def test_compare_hf_dt(tmp_path, capsys):
    pytest.importorskip("transformers")
    from test_dt import K, hf_model

    hf_model().save_pretrained(tmp_path / "model")
    out = tmp_path / "hf.policy"
    assert main(["export", "--from", "hf-dt", str(tmp_path / "model"), "--context", str(K), "--return-scale", "10",
                 "--target-return", "40", "--action-low", "-2", "-1", "--action-high", "2", "1", "--out", str(out)]) == 0
    assert main(["compare", str(out), "--reference", str(tmp_path / "model"), "--from", "hf-dt", "--steps", "300"]) == 0
    assert "first step over 1e-05: none" in capsys.readouterr().out
