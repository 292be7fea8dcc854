"""`policyrt demo --video`: one episode rendered offscreen (MuJoCo EGL) to GIF and MP4, real files."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("gymnasium")
pytest.importorskip("torch")
pytest.importorskip("PIL")


@pytest.fixture(scope="module")
def pendulum_bundle(tmp_path_factory) -> Path:
    from conftest import tiny_policy

    from policyrt.export.bundle_export import export_policy

    policy = tiny_policy(obs_dim=4, act_dim=1, action_low=(-3.0,), action_high=(3.0,))
    doc = {"kind": "xlstm", "config": policy.config.to_dict(), "commands": ["(test fixture: random weights)"]}
    return export_policy(policy, doc, Path("random"), tmp_path_factory.mktemp("b") / "p.policy", progress=lambda *_: None)


def render(bundle, out, **kwargs):
    from policyrt.sim.video import render_episode

    try:
        return render_episode(str(bundle), "InvertedPendulum-v5", out, max_steps=6, width=64, height=48, **kwargs)
    except Exception as exc:  # no EGL/OSMesa on this machine: nothing to test here
        if "gl" in repr(exc).lower():
            pytest.skip(f"offscreen rendering unavailable: {exc}")
        raise


def test_gif_has_one_frame_per_step_plus_the_reset(pendulum_bundle, tmp_path):
    from PIL import Image

    result = render(pendulum_bundle, tmp_path / "ep.gif")
    assert result.frames == result.length + 1 and 1 <= result.length <= 6
    with Image.open(result.path) as gif:
        assert gif.n_frames == result.frames and gif.size == (64, 48)


def test_mp4_is_written_when_ffmpeg_is_there(pendulum_bundle, tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    result = render(pendulum_bundle, tmp_path / "ep.mp4")
    assert result.path.stat().st_size > 0 and result.path.read_bytes()[4:8] == b"ftyp"


def test_other_extensions_are_refused_before_anything_runs(pendulum_bundle, tmp_path):
    from policyrt.sim.video import render_episode

    with pytest.raises(ValueError, match="must end in .mp4 or .gif"):
        render_episode(str(pendulum_bundle), "InvertedPendulum-v5", tmp_path / "ep.avi")
