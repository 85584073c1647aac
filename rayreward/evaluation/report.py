"""The files ``rayreward evaluate`` writes: metrics.json, report.md and PNG figures.

Figures are drawn with matplotlib's Agg canvas directly (no pyplot), so writing them
never touches a display or the global backend of a program that imports rayreward.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

FIGURES = {
    "rewards": "reward_histogram.png",
    "margins": "margin_histogram.png",
    "reliability": "reliability_diagram.png",
}


def write_report(metrics: dict[str, Any], rewards_chosen, rewards_rejected, out_dir: str | Path) -> dict[str, Path]:
    """Writes ``metrics.json``, ``report.md`` and the three figures into ``out_dir``.

    Args:
        metrics: from ``rayreward.evaluation.evaluate.evaluate`` (``evaluation_metrics`` plus run
            details).
        rewards_chosen: rewards of the chosen answers.
        rewards_rejected: rewards of the rejected answers.
        out_dir: created when missing.

    Returns:
        The paths written, by name: ``metrics``, ``report``, ``rewards``, ``margins``,
        ``reliability``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chosen = np.asarray(rewards_chosen, dtype=np.float64)
    rejected = np.asarray(rewards_rejected, dtype=np.float64)
    paths = {name: out / file for name, file in FIGURES.items()}
    _reward_histogram(chosen, rejected, paths["rewards"])
    _margin_histogram(chosen - rejected, paths["margins"])
    _reliability_diagram(metrics["calibration_bins"], metrics["ece"], paths["reliability"])
    paths["metrics"] = out / "metrics.json"
    paths["metrics"].write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    paths["report"] = out / "report.md"
    paths["report"].write_text(markdown_report(metrics), encoding="utf-8")
    return paths


def markdown_report(metrics: dict[str, Any]) -> str:
    """The evaluation as a markdown document (tables and the figures' links)."""
    m = metrics
    lines = [
        "# Reward model evaluation",
        "",
        f"- model: `{m.get('model', '?')}`",
        f"- data: `{m.get('data', '?')}` ({m['pairs']} pairs, format {m.get('format', '?')})",
    ]
    if m.get("truncated"):
        lines.append(f"- {m['truncated']} pairs were longer than {m.get('max_length')} tokens and kept their last tokens")
    if m.get("ties"):
        lines.append(f"- {m['ties']} pairs were ties (equal rewards), counted as wrong")
    lines += [
        "",
        "## Headline",
        "",
        "| accuracy | mean margin | ECE | log loss | Brier |",
        "|---:|---:|---:|---:|---:|",
        f"| {m['accuracy']:.4f} | {m['margin_mean']:.4f} | {m['ece']:.4f} | {m['log_loss']:.4f} | {m['brier']:.4f} |",
        "",
        "## Rewards",
        "",
        "| | mean | std |",
        "|---|---:|---:|",
        f"| chosen | {m['chosen_mean']:.4f} | {m['chosen_std']:.4f} |",
        f"| rejected | {m['rejected_mean']:.4f} | {m['rejected_std']:.4f} |",
        f"| margin (chosen - rejected) | {m['margin_mean']:.4f} | {m['margin_std']:.4f} |",
        f"| all answers | {m['reward_mean']:.4f} | {m['reward_std']:.4f} |",
        "",
        f"![rewards]({FIGURES['rewards']}) ![margins]({FIGURES['margins']})",
        "",
        "## Calibration",
        "",
        "P(preferred) = sigmoid(|r_chosen - r_rejected|), the Bradley-Terry probability that the answer "
        "the model ranks higher is the better one; accuracy is how often it is. ECE is the pair-weighted "
        "mean gap between the two.",
        "",
        "| P(preferred) bin | pairs | mean P(preferred) | accuracy | gap |",
        "|---|---:|---:|---:|---:|",
    ]
    for b in m["calibration_bins"]:
        if b["count"]:
            gap = b["accuracy"] - b["confidence"]
            lines.append(f"| {b['low']:.2f}-{b['high']:.2f} | {b['count']} | {b['confidence']:.4f} | {b['accuracy']:.4f} | {gap:+.4f} |")
        else:
            lines.append(f"| {b['low']:.2f}-{b['high']:.2f} | 0 | | | |")
    lines += ["", f"![reliability]({FIGURES['reliability']})", ""]
    for key, title, column in (("by_length", "Accuracy by length", "tokens (longer answer)"),
                               ("by_group", f"Accuracy by {m.get('group_column') or 'group'}", "group")):
        if m.get(key):
            lines += [f"## {title}", "", f"| {column} | pairs | accuracy | mean margin |", "|---|---:|---:|---:|"]
            lines += [f"| {r['group']} | {r['count']} | {r['accuracy']:.4f} | {r['mean_margin']:.4f} |" for r in m[key]]
            lines.append("")
    return "\n".join(lines)


def _figure(size=(6.0, 4.0)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _reward_histogram(chosen: np.ndarray, rejected: np.ndarray, path: Path) -> None:
    fig, ax = _figure()
    both = np.concatenate([chosen, rejected])
    bins = np.linspace(both.min(), both.max(), 41) if both.max() > both.min() else 10
    ax.hist(chosen, bins=bins, alpha=0.6, label=f"chosen (mean {chosen.mean():.2f})", color="tab:green")
    ax.hist(rejected, bins=bins, alpha=0.6, label=f"rejected (mean {rejected.mean():.2f})", color="tab:red")
    ax.set(xlabel="reward", ylabel="answers", title="Rewards of chosen and rejected answers")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png")


def _margin_histogram(diff: np.ndarray, path: Path) -> None:
    fig, ax = _figure()
    ax.hist(diff, bins=40, color="tab:blue", alpha=0.8)
    ax.axvline(0.0, color="black", linewidth=1)
    ax.set(xlabel="r_chosen - r_rejected", ylabel="pairs",
           title=f"Margins: {(diff > 0).mean():.1%} of pairs above 0, mean {diff.mean():.2f}")
    fig.tight_layout()
    fig.savefig(path, format="png")


def _reliability_diagram(bins: list[dict[str, Any]], ece: float, path: Path) -> None:
    fig, ax = _figure((5.0, 5.0))
    full = [b for b in bins if b["count"]]
    centers = [(b["low"] + b["high"]) / 2 for b in full]
    width = bins[0]["high"] - bins[0]["low"] if bins else 0.05
    ax.bar(centers, [b["accuracy"] for b in full], width=width * 0.9, color="tab:blue", alpha=0.7, label="observed accuracy")
    ax.plot([b["confidence"] for b in full], [b["confidence"] for b in full], "o", color="tab:orange",
            label="mean P(preferred) of the bin")
    ax.plot([0.5, 1.0], [0.5, 1.0], "--", color="gray", label="perfect calibration")
    ax.set(xlim=(0.5, 1.0), ylim=(0.0, 1.0), xlabel="P(preferred) = sigmoid(|margin|)", ylabel="accuracy",
           title=f"Reliability diagram (ECE {ece:.3f})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, format="png")
