"""Drift of a bundle against its original model, step by step, on recorded or random inputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from policyrt import contract


@dataclass
class DriftReport:
    drift: np.ndarray  # [T] max abs action difference per step
    resets: np.ndarray  # [T] bool
    source: str
    inputs: str

    def summary(self) -> dict:
        d = self.drift
        return {
            "source": self.source,
            "inputs": self.inputs,
            "steps": int(d.size),
            "max_abs": float(d.max()),
            "p50": float(np.percentile(d, 50)),
            "p99": float(np.percentile(d, 99)),
            "argmax_step": int(d.argmax()),
        }

    def table(self, tolerance: float) -> str:
        s = self.summary()
        over = np.flatnonzero(self.drift > tolerance)
        lines = [
            f"compare against {self.source} on {self.inputs} inputs, {s['steps']} steps",
            f"  action drift: max {s['max_abs']:.2e} (step {s['argmax_step']}), p50 {s['p50']:.2e}, p99 {s['p99']:.2e}",
            f"  first step over {tolerance:g}: {over[0] if over.size else 'none'}",
            "  drift by step range (max abs):",
        ]
        edges = [0, 1, 10, 100, 1000, 10_000, 100_000]
        for lo, hi in zip(edges[:-1], edges[1:]):
            if lo >= self.drift.size:
                break
            lines.append(f"    steps {lo:>6}-{min(hi, self.drift.size) - 1:<6} {self.drift[lo:hi].max():.2e}")
        return "\n".join(lines)

    def plot(self, path: str, tolerance: float) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 3.5))
        steps = np.arange(self.drift.size)
        ax.semilogy(steps, np.maximum(self.drift, 1e-12), lw=0.8, label="max |bundle - original| per step")
        ax.axhline(tolerance, color="tab:red", ls="--", lw=1, label=f"tolerance {tolerance:g}")
        for step in np.flatnonzero(self.resets):
            ax.axvline(step, color="grey", alpha=0.3, lw=0.8)
        ax.set_xlabel("step (grey: episode resets)")
        ax.set_ylabel("action drift (exact 0 at 1e-12)")
        ax.set_title(f"bundle vs {self.source}")
        ax.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def random_inputs(manifest, steps: int, seed: int):
    """Smooth random observations scaled like the policy's training data, random rewards, resets."""
    from policyrt.policies.kinds import manifest_config

    rng = np.random.default_rng(seed)
    mean, std = (np.asarray(v, np.float32) for v in manifest_config(manifest).obs_normalization)
    resets = np.zeros(steps, bool)
    resets[0] = True
    resets[rng.choice(np.arange(1, steps), size=min(3, steps - 1), replace=False)] = True
    walk = np.zeros(manifest.obs_dim)
    obs = np.zeros((steps, manifest.obs_dim), np.float32)
    for t in range(steps):
        walk = 0.9 * walk + 0.45 * rng.standard_normal(walk.shape)
        obs[t] = mean + std * walk
    return obs, rng.uniform(0, 1, steps).astype(np.float32), resets, None


def recorded_inputs(bundle):
    """Slot 0 of the bundle's parity.json rollout (its recorded prev_action included)."""
    from policyrt.runtime.verify import parity_inputs

    inputs = parity_inputs(bundle.parity())
    return tuple(inputs[name][:, 0] for name in (contract.OBS, contract.REWARD, contract.RESET, contract.PREV_ACTION))


def drift_curve(session, reference, obs, reward, resets, prev_actions, target_return: float, source: str,
                inputs: str) -> DriftReport:
    """Step bundle and original side by side; prev_action is the bundle's own last action unless recorded."""
    drift = np.zeros(len(obs))
    prev = np.zeros(session.manifest.act_dim, np.float32)
    for t in range(len(obs)):
        r = float(reward[t])
        if resets[t]:
            session.reset()
            session.set_target_return(target_return)
            reference.reset(target_return)
            prev, r = np.zeros_like(prev), 0.0
        if prev_actions is not None and not resets[t]:
            prev = prev_actions[t]
        got = session.step(obs[t], r, prev_action=prev)
        want = reference.act(obs[t], r, prev)
        drift[t] = float(np.abs(got - want).max())
        prev = got
    return DriftReport(drift=drift, resets=np.asarray(resets, bool), source=source, inputs=inputs)
