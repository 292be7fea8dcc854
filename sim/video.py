"""Render one closed-loop episode of a bundle offscreen to an MP4 or a GIF.

The episode is played in-process (Session on the chosen backend, the environment with
render_mode="rgb_array"): a video is for people to look at, so the wire protocol adds nothing
here, while the closed-loop numbers come from `policyrt eval`. MuJoCo renders offscreen with EGL
unless MUJOCO_GL already says otherwise (osmesa for machines without a GPU driver); it must be
chosen before mujoco is first imported, hence the environment variable is set on import of this
module's `render_episode`.

GIF goes through Pillow (always there with matplotlib); MP4 through imageio's ffmpeg plugin
(`pip install 'policyrt[video]'`), and without it the error says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMATS = (".mp4", ".gif")


@dataclass(frozen=True)
class VideoResult:
    path: Path
    frames: int
    episode_return: float
    length: int


def render_episode(bundle: str, env_id: str, out: str | Path, *, seed: int = 0, backend: str = "onnxruntime",
                   max_steps: int = 1000, width: int = 480, height: int = 360, fps: int | None = None) -> VideoResult:
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise ValueError(f"--video {out}: the file name must end in .mp4 or .gif")
    os.environ.setdefault("MUJOCO_GL", "egl")
    import gymnasium as gym

    from policyrt.runtime import load

    session = load(bundle, backend=backend)
    env = gym.make(env_id, render_mode="rgb_array", width=width, height=height)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        rate = fps or max(1, round(1.0 / float(env.unwrapped.dt)))
        obs, _ = env.reset(seed=seed)
        session.reset()
        low, high = env.action_space.low, env.action_space.high
        reward, total, steps = 0.0, 0.0, 0
        with _writer(out, rate) as writer:  # frames stream out: a 1000-step episode never sits in memory
            writer.append(env.render())
            while steps < max_steps:
                action = np.clip(session.step(obs.astype(np.float32), reward), low, high)
                obs, reward, terminated, truncated, _ = env.step(action.reshape(low.shape))
                total, steps = total + float(reward), steps + 1
                writer.append(env.render())
                if terminated or truncated:
                    break
    finally:
        env.close()
    return VideoResult(out, writer.frames, total, steps)


class _writer:
    """`with _writer(path, fps) as w: w.append(frame)`: MP4 through imageio-ffmpeg, frame by frame;
    GIF through Pillow, each frame kept palette-compressed (a quarter of its RGB size) until the end."""

    def __init__(self, out: Path, fps: int):
        self.out, self.fps, self.frames = out, fps, 0
        self._gif: list | None = [] if out.suffix.lower() == ".gif" else None
        self._mp4 = None

    def __enter__(self):
        if self._gif is None:
            try:
                import imageio.v2 as imageio
                import imageio_ffmpeg  # noqa: F401  (the MP4 writer; imported here to fail clearly)
            except ImportError:
                raise RuntimeError(f"--video {self.out}: MP4 needs imageio-ffmpeg (`pip install "
                                   "'policyrt[video]'`), or name a .gif file") from None
            self._mp4 = imageio.get_writer(self.out, fps=self.fps, codec="libx264", quality=7, macro_block_size=8)
        return self

    def append(self, frame: np.ndarray) -> None:
        self.frames += 1
        if self._mp4 is not None:
            self._mp4.append_data(frame)
        else:
            from PIL import Image

            self._gif.append(Image.fromarray(frame).quantize(colors=128))

    def __exit__(self, *exc) -> None:
        if self._mp4 is not None:
            self._mp4.close()
        elif self._gif:
            first, rest = self._gif[0], self._gif[1:]
            first.save(self.out, save_all=True, append_images=rest, duration=round(1000 / self.fps), loop=0)
