"""Per-stage latency recording for control loops.

Durations go into a ring of int64 nanoseconds allocated once, so recording a tick allocates
nothing; percentiles are computed only when a summary is asked for, off the hot path.
"""

from __future__ import annotations

import time

import numpy as np

now_ns = time.perf_counter_ns  # CLOCK_MONOTONIC on Linux; one name so every stage uses the same clock


class StageTimes:
    """Durations of named stages, one row per tick; keeps the most recent `capacity` ticks."""

    def __init__(self, stages: tuple[str, ...], capacity: int = 1 << 17):
        self.stages = tuple(stages)
        self._ns = np.zeros((capacity, len(self.stages)), np.int64)
        self.count = 0  # ticks recorded so far, including those the ring has overwritten

    def record(self, *durations_ns: int) -> None:
        row = self._ns[self.count % len(self._ns)]
        for i, d in enumerate(durations_ns):
            row[i] = d
        self.count += 1

    def recorded(self) -> np.ndarray:
        """The stored rows (oldest first is not guaranteed), int64 ns [n, stages]."""
        return self._ns[: min(self.count, len(self._ns))]

    def save(self, path) -> None:
        """The recorded rows as .npz: `stages` (names) and `ns` (int64 [n, stages]), for reports
        that need whole distributions (histograms), not just the summary's percentiles."""
        with open(path, "wb") as f:  # a file object: np.savez would append .npz to a bare name
            np.savez(f, stages=np.array(self.stages), ns=self.recorded())

    def summary(self) -> dict[str, dict[str, float]]:
        """stage -> {n, p50_us, p99_us, max_us, mean_us}; empty when nothing was recorded."""
        rows = self.recorded()
        if not len(rows):
            return {}
        us = rows / 1e3
        p50, p99 = np.percentile(us, [50, 99], axis=0)
        return {
            name: {
                "n": int(len(rows)),
                "p50_us": round(float(p50[i]), 1),
                "p99_us": round(float(p99[i]), 1),
                "max_us": round(float(us[:, i].max()), 1),
                "mean_us": round(float(us[:, i].mean()), 1),
            }
            for i, name in enumerate(self.stages)
        }


def format_table(summary: dict[str, dict[str, float]], title: str = "stage") -> str:
    """A fixed-width p50/p99/max table, one stage per line."""
    if not summary:
        return f"{title}: no ticks recorded"
    width = max(len(title), *(len(s) for s in summary))
    lines = [f"{title:<{width}}  {'p50 us':>9}  {'p99 us':>9}  {'max us':>9}  {'n':>8}"]
    for name, s in summary.items():
        lines.append(
            f"{name:<{width}}  {s['p50_us']:>9.1f}  {s['p99_us']:>9.1f}  {s['max_us']:>9.1f}  {s['n']:>8d}"
        )
    return "\n".join(lines)
