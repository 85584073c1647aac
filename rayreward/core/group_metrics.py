"""What a reward model is worth on ranked groups and on ratings: pure functions over arrays.

Ranked groups (a reward and a score per response; higher score is better, equal scores
tie):

- ``top1_accuracy``: the response with the highest reward is a best-scored one, and no
  other response has that reward (a tie at the top counts as wrong, as a tied pair does);
- ``best_of_k_accuracy``: as RewardBench 2 counts best-of-K: 1 when the highest reward is
  a best-scored response; when ``m`` responses share the highest reward and ``c`` of them
  are best-scored, ``c / m`` (a best response tied with ``k - 1`` others gets ``1 / k``);
- ``pairwise_accuracy``: over every pair of a group with different scores, the share
  whose rewards order them the same way (a reward tie is wrong);
- ``kendall_tau``: Kendall's tau-b between rewards and scores, per group, averaged over
  the groups where it is defined (both vary).

Ratings: per attribute, over the rated cells only, RMSE, Pearson and Spearman (ranks with
ties averaged) correlation.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np


def _group_pairs(rewards: np.ndarray, scores: np.ndarray) -> tuple[int, int]:
    """(pairs with different scores, of which ordered right by the rewards)."""
    ds = np.sign(scores[:, None] - scores[None, :])
    dr = np.sign(rewards[:, None] - rewards[None, :])
    upper = np.triu(np.ones_like(ds, dtype=bool), 1)
    judged = upper & (ds != 0)
    return int(judged.sum()), int((judged & (ds == dr)).sum())


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of two equal-length sequences; NaN when either is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    dx, dy = np.sign(x[:, None] - x[None, :]), np.sign(y[:, None] - y[None, :])
    upper = np.triu(np.ones_like(dx, dtype=bool), 1)
    s = float((dx * dy)[upper].sum())
    nx, ny = float((dx[upper] != 0).sum()), float((dy[upper] != 0).sum())
    return s / math.sqrt(nx * ny) if nx and ny else float("nan")


def ranking_metrics(groups: Sequence[tuple[Sequence[float], Sequence[float]]]) -> dict[str, Any]:
    """Top-1, best-of-K and pairwise accuracy and mean Kendall tau over ``(rewards, scores)`` groups.

    Example:
        >>> ranking_metrics([([2.0, 1.0, 0.0], [1, 0, 0]), ([1.0, 1.0], [1, 0])])["best_of_k_accuracy"]
        0.75
    """
    if not groups:
        raise ValueError("no groups to summarise")
    top1, best, taus = [], [], []
    judged = right = responses = 0
    for rewards, scores in groups:
        r, s = np.asarray(rewards, dtype=np.float64), np.asarray(scores, dtype=np.float64)
        if r.shape != s.shape or r.size < 2:
            raise ValueError(f"a group needs one reward per scored response and at least 2 of them; got {r.size}, {s.size}")
        responses += r.size
        top = r == r.max()
        is_best = s == s.max()
        best.append(float((top & is_best).sum()) / float(top.sum()))
        top1.append(float(top.sum() == 1 and bool(is_best[np.argmax(r)])))
        n, k = _group_pairs(r, s)
        judged, right = judged + n, right + k
        tau = kendall_tau_b(r, s)
        if not math.isnan(tau):
            taus.append(tau)
    return {
        "groups": len(groups),
        "responses": responses,
        "top1_accuracy": float(np.mean(top1)),
        "best_of_k_accuracy": float(np.mean(best)),
        "pairwise_accuracy": right / judged if judged else float("nan"),
        "preference_pairs": judged,
        "kendall_tau": float(np.mean(taus)) if taus else float("nan"),
        "kendall_tau_groups": len(taus),
    }


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def rating_metrics(predictions, labels, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per-attribute RMSE, Pearson and Spearman over the rated cells (NaN label = not rated).

    Args:
        predictions: ``(rows, attributes)`` predicted values, in rating units.
        labels: ``(rows, attributes)``, NaN where not rated.
        names: the attribute names.

    Returns:
        ``{name: {"rmse", "pearson", "spearman", "rated"}}``.
    """
    pred = np.asarray(predictions, dtype=np.float64).reshape(-1, len(names))
    lab = np.asarray(labels, dtype=np.float64).reshape(-1, len(names))
    out = {}
    for a, name in enumerate(names):
        rated = ~np.isnan(lab[:, a])
        p, y = pred[rated, a], lab[rated, a]
        out[name] = {
            "rated": int(rated.sum()),
            "rmse": float(np.sqrt(np.mean((p - y) ** 2))) if rated.any() else float("nan"),
            "pearson": _pearson(p, y),
            "spearman": _pearson(_ranks(p), _ranks(y)) if rated.any() else float("nan"),
        }
    return out


def flat_rating_metrics(per_attribute: dict[str, dict[str, float]]) -> dict[str, float]:
    """``{"helpful/rmse": ..., ...}`` plus the means over attributes (``rmse``, ``pearson``, ``spearman``)."""
    out: dict[str, float] = {}
    for name, values in per_attribute.items():
        for key in ("rmse", "pearson", "spearman"):
            out[f"{name}/{key}"] = values[key]
    for key in ("rmse", "pearson", "spearman"):
        vals = [v[key] for v in per_attribute.values() if not math.isnan(v[key])]
        out[key] = float(np.mean(vals)) if vals else float("nan")
    return out


# What the evaluation of each data shape reports (in the loop and beside it), without the
# ``eval_`` prefix: a metric of one shape named for another is caught before a run starts.
_PAIR_METRICS = ("accuracy", "loss", "rewards/chosen", "rewards/rejected", "rewards/margin", "mean_margin", "ece")
_GROUP_METRICS = ("accuracy", "loss", "top1_accuracy", "best_of_k_accuracy", "pairwise_accuracy", "kendall_tau")
_RATING_KEYS = ("rmse", "pearson", "spearman")


def reported_metrics(shape: str, attributes: Sequence[str] = ()) -> tuple[str, ...]:
    """The ``eval_*`` metrics an evaluation of ``shape`` data (``pairs``, ``groups``, ``ratings``) reports."""
    if shape == "ratings":
        names = ("loss", *_RATING_KEYS, *(f"{a}/{k}" for a in attributes for k in _RATING_KEYS))
    else:
        names = _GROUP_METRICS if shape == "groups" else _PAIR_METRICS
    return tuple(f"eval_{n}" for n in names)


def metric_shape_problem(metric: str, shape: str, attributes: Sequence[str] = ()) -> str | None:
    """Why ``metric`` is never reported for ``shape`` data, or None (it is, or it is not one of
    rayreward's metrics: a ``compute_metrics`` of the user's may report it)."""
    if not isinstance(metric, str) or not metric.startswith("eval_"):
        return None
    name = metric.removeprefix("eval_")
    ours = set(_PAIR_METRICS) | set(_GROUP_METRICS) | set(_RATING_KEYS)
    if (name in ours or name.rsplit("/", 1)[-1] in _RATING_KEYS) and metric not in reported_metrics(shape, attributes):
        return (f"got {metric!r}, which the evaluation of {shape} data does not report; expected one of "
                f"{', '.join(reported_metrics(shape, attributes))}")
    return None


__all__ = ["flat_rating_metrics", "kendall_tau_b", "metric_shape_problem", "ranking_metrics", "rating_metrics",
           "reported_metrics"]
