"""Write an evaluation report (sim/evaluate.py's dict): report.json, report.md and PNG plots.

report.json holds everything but the raw stage durations; report.md is the same for people; the
plots are the return of every episode beside the expert's on the same seed, and the latency
histograms of the controller's and the robot's stages. matplotlib is the `plot` extra: without
it the report says so instead of failing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SCHEMA = 1
# Stages plotted: the controller's inference and its whole share of a tick, the robot's wait for
# an answer and its environment steps (receive/filter/send are in the tables).
PLOTTED = (("controller", "infer"), ("controller", "respond"), ("robot", "answer"), ("robot", "env_step"))


def public(report: dict) -> dict:
    """The report without private keys (raw arrays), ready for JSON."""
    runs = [{k: v for k, v in run.items() if not k.startswith("_")} for run in report["runs"]]
    return {"schema": SCHEMA, **report, "runs": runs}


def write_report(report: dict, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "report.json"]
    (out_dir / "report.json").write_text(json.dumps(public(report), indent=2) + "\n")
    plots = write_plots(report, out_dir)
    report_md = out_dir / "report.md"
    report_md.write_text(markdown(report, [p.name for p in plots]))
    return [*written, report_md, *plots]


def summary_lines(report: dict) -> list[str]:
    """The headline numbers, for the terminal and the top of report.md."""
    lines = [f"{report['env']}: {report['episodes']} episodes, {report['parallel']} environment(s) at once, "
             f"seed {report['seed']}"]
    expert = report["expert"]
    for run in report["runs"]:
        r = run["return"]
        rel = f" ({run['return_vs_expert']:.1%} of the expert)" if "return_vs_expert" in run else ""
        lines.append(f"  {run['label']}: return {r['mean']:.2f} +/- {r['std']:.2f}{rel}, length "
                     f"{run['length']['mean']:.1f}, {run['steps_per_s']:.0f} env steps/s")
    if expert["available"]:
        e = expert["return"]
        lines.append(f"  expert ({expert['expert']}): return {e['mean']:.2f} +/- {e['std']:.2f}")
    else:
        lines.append(f"  expert: {expert['reason']}")
    if report["compare"]:
        c = report["compare"]
        lines.append(f"  difference (b - a): mean return {c['mean_return_diff']:+.4g}, largest per-episode "
                     f"|diff| {c['max_abs_return_diff']:.4g}, same length in {c['same_lengths']}/{report['episodes']}")
    return lines


def markdown(report: dict, plots: list[str]) -> str:
    out = ["# Evaluation report", "", *[line.strip() for line in summary_lines(report)], ""]
    out += [f"Seeds: {report['seeding']}; max episode steps: {report['max_episode_steps'] or 'the environment default'}.",
            ""]
    out += _episode_table(report) + [""]
    for run in report["runs"]:
        out += [f"## Latency: {run['label']}", "",
                f"{run['env_steps']} env steps in {run['ticks']} controller ticks over {run['session_s']:.2f} s "
                f"({run['steps_per_s']:.0f} steps/s); fallbacks {run['fallbacks']}; protocol errors "
                f"{run['errors'] or 'none'}. A tick serves all {report['parallel']} environment(s).", "",
                "| side | stage | p50 us | p90 us | p99 us | max us | n |", "|---|---|---:|---:|---:|---:|---:|"]
        for side, stages in run["latency_us"].items():
            for stage, s in stages.items():
                out.append(f"| {side} | {stage} | {s['p50']} | {s['p90']} | {s['p99']} | {s['max']} | {s['n']} |")
        out.append("")
    if plots:
        out += ["## Plots", ""] + [f"![{name}]({name})" for name in plots] + [""]
    else:
        out += ["(no plots: matplotlib is not installed; `pip install 'policyrt[plot]'`)", ""]
    return "\n".join(out)


def _episode_table(report: dict) -> list[str]:
    runs, expert = report["runs"], report["expert"]
    head = ["episode", "seed"] + [f"{run['label']} return (length)" for run in runs]
    head += ["expert return"] if expert["available"] else []
    head += ["b - a"] if report["compare"] else []
    rows = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for k in range(report["episodes"]):
        cells = [str(k), str(report["seeds"][k])]
        cells += [f"{run['episodes'][k]['return']:.2f} ({run['episodes'][k]['length']})" for run in runs]
        cells += [f"{expert['returns'][k]:.2f}"] if expert["available"] else []
        cells += [f"{report['compare']['return_diff'][k]:+.4g}"] if report["compare"] else []
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def write_plots(report: dict, out_dir: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    return [_plot_returns(report, out_dir / "returns.png", plt), _plot_latency(report, out_dir / "latency.png", plt)]


def _plot_returns(report: dict, path: Path, plt) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4))
    episodes = np.arange(report["episodes"])
    for i, run in enumerate(report["runs"]):
        returns = [e["return"] for e in run["episodes"]]
        ax.plot(episodes, returns, "o" if i == 0 else "x", label=f"{run['label']} (mean {run['return']['mean']:.1f})")
    expert = report["expert"]
    if expert["available"]:
        ax.plot(episodes, expert["returns"], "_", color="black", markersize=12, label="expert, same seed")
        ax.axhline(expert["return"]["mean"], color="black", linestyle="--", linewidth=1,
                   label=f"expert mean {expert['return']['mean']:.1f}")
    ax.set_xlabel("episode (same seed across runs)")
    ax.set_ylabel("return")
    ax.set_title(f"{report['env']}: return per episode")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_latency(report: dict, path: Path, plt) -> Path:
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(4 * len(PLOTTED), 3.5))
    for ax, (side, stage) in zip(axes, PLOTTED):
        for run in report["runs"]:
            ns = run["_stage_ns"].get(side, {}).get(stage)
            if ns is None or not len(ns):
                continue
            us = ns / 1e3
            top = np.percentile(us, 99.5)  # keep the rare outliers from flattening the histogram
            ax.hist(np.minimum(us, top), bins=60, alpha=0.6, label=run["label"])
        ax.set_title(f"{side}: {stage}")
        ax.set_xlabel("us per tick (clipped at p99.5)")
    axes[0].set_ylabel("ticks")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{report['env']}, {report['parallel']} environment(s) per tick")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
