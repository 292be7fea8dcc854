"""Bar chart of p50/p99 step latency per variant from a `policyrt bench --json` file."""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src: str, dst: str) -> None:
    report = json.load(open(src))
    names = list(report["results"])
    p50 = [report["results"][n]["p50_us"] for n in names]
    p99 = [report["results"][n]["p99_us"] for n in names]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], p50, width=0.4, label="p50")
    ax.bar([x + 0.2 for x in xs], p99, width=0.4, label="p99")
    ax.set_xticks(list(xs), [n.replace("_", "\n", 1) for n in names], fontsize=8)
    ax.set_ylabel("microseconds per step (batch 1)")
    ax.set_title(f"{report['bundle']}: {report['graph_nodes']} graph nodes, {report['steps']} steps")
    ax.legend()
    fig.tight_layout()
    fig.savefig(dst, dpi=120)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
