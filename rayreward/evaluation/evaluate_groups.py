"""``rayreward evaluate`` on ranked groups and on ratings.

Ranked groups (``responses`` + ``ranking``/``scores``, or chosen/rejected lists): every
response is scored, and ``rayreward.core.group_metrics.ranking_metrics`` gives top-1
accuracy, best-of-K accuracy as RewardBench 2 counts it, pairwise accuracy and Kendall
tau. Ratings (``prompt`` + ``response`` + the model's attribute columns): per attribute,
over the rated rows, RMSE, Pearson and Spearman of the predicted values.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from rayreward.core.group_metrics import ranking_metrics, rating_metrics
from rayreward.data.formats import DataFormatError
from rayreward.data.groups import group_scores, is_missing


def _write(metrics: dict[str, Any], out_dir, lines: list[str]) -> dict[str, Path]:
    if out_dir is None:
        return {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True, default=_json) + "\n")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return {"metrics": out / "metrics.json", "report": out / "report.md"}


def _json(value):
    return None if isinstance(value, float) and math.isnan(value) else str(value)


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def evaluate_ranked(scored, layout, model_dir, data, out_dir=None) -> tuple[dict[str, Any], dict[str, Path]]:
    """Ranking metrics of scored group rows (``rewards`` column added by ``RewardScorer``)."""
    groups = []
    for row in scored.iter_rows():
        groups.append((list(row["rewards"]), group_scores(row, layout.fmt, layout.names)))
    metrics: dict[str, Any] = {"model": str(model_dir), "data": str(data), "format": layout.fmt}
    metrics.update(ranking_metrics(groups))
    lines = [
        f"# Ranked evaluation of {model_dir}", "", f"Data: {data} ({metrics['groups']} groups, "
        f"{metrics['responses']} responses, {metrics['preference_pairs']} preference pairs)", "",
        "| metric | value |", "|---|---|",
        *(f"| {k} | {_fmt(metrics[k])} |" for k in ("top1_accuracy", "best_of_k_accuracy", "pairwise_accuracy",
                                                   "kendall_tau")),
        "", "best_of_k_accuracy counts as RewardBench 2 does: a best response tied at the top with k-1 others "
        "gets 1/k; top1_accuracy counts such a tie as wrong.",
    ]
    return metrics, _write(metrics, out_dir, lines)


def evaluate_ratings(scored, names, model_dir, data, out_dir=None) -> tuple[dict[str, Any], dict[str, Path]]:
    """Per-attribute RMSE, Pearson and Spearman of scored rated rows."""
    preds, labels = [], []
    for row in scored.iter_rows():
        preds.append([row[f"reward_{n}"] if len(names) > 1 else row.get(f"reward_{n}", row["reward"]) for n in names])
        labels.append([float("nan") if is_missing(row.get(n)) else float(row[n]) for n in names])
    per = rating_metrics(np.asarray(preds), np.asarray(labels), names)
    metrics: dict[str, Any] = {"model": str(model_dir), "data": str(data), "format": "ratings",
                               "rows": len(preds), "attributes": per}
    lines = [f"# Ratings evaluation of {model_dir}", "", f"Data: {data} ({len(preds)} rows)", "",
             "| attribute | rated | RMSE | Pearson | Spearman |", "|---|---|---|---|---|",
             *(f"| {n} | {v['rated']} | {_fmt(v['rmse'])} | {_fmt(v['pearson'])} | {_fmt(v['spearman'])} |"
               for n, v in per.items())]
    return metrics, _write(metrics, out_dir, lines)


def rating_names(model_dir, columns) -> list[str] | None:
    """The model's attributes when the data has a column for each of them (ratings), else None."""
    from transformers import AutoConfig

    from rayreward.core.attributes import attribute_spec

    spec = attribute_spec(AutoConfig.from_pretrained(str(model_dir)))
    if not spec.multi:
        return None
    missing = [n for n in spec.names if n not in columns]
    if missing and len(missing) < len(spec.names):
        raise DataFormatError(f"the model rates {', '.join(spec.names)} but the data has no column(s) "
                              f"{', '.join(missing)}; give every attribute's column (values may be null)")
    return None if missing else list(spec.names)


__all__ = ["evaluate_ranked", "evaluate_ratings", "rating_names"]
