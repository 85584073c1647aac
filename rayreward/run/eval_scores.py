"""A model's rewards on a run's tokenized eval data, and the metrics of its shape.

The run's end (``final_*`` in ``metrics.json`` and the console's summary line) and the
checkpoints evaluated beside training (``storage.checkpoint_eval: ray``) score the eval
data the run already holds in Ray's object store with an exported model, through
``RewardScorer`` (the forward pass of ``score``, ``evaluate`` and ``serve``). Each shape
has the metrics ``rayreward evaluate`` reports for it, under the names the Trainer's
in-loop evaluation uses:

- pairs: ``accuracy``, ``mean_margin``, ``ece``, ``pairs`` (``core.metrics.headline_metrics``);
- ranked groups: ``top1_accuracy``, ``best_of_k_accuracy``, ``pairwise_accuracy`` (also
  ``accuracy``), ``kendall_tau``, ``groups`` (``core.group_metrics.ranking_metrics``);
- ratings: ``<attribute>/rmse``, ``/pearson``, ``/spearman`` and their means over the
  attributes (``rmse``, ...), ``rated_rows``.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rayreward.runtime import storage as _storage

_BATCH_ROWS = 256


@dataclass
class EvalScores:
    """A model's outputs on the eval data of one shape (``kind``: pairs, groups, ratings)."""

    kind: str
    chosen: np.ndarray | None = None
    rejected: np.ndarray | None = None
    groups: list[tuple[list[float], list[float]]] = field(default_factory=list)
    values: np.ndarray | None = None  # ratings: (rows, attributes), in rating units
    labels: np.ndarray | None = None  # ratings: NaN where not rated
    names: tuple[str, ...] = ()
    spec: Any = None  # the model's AttributeSpec

    def rewards(self) -> np.ndarray | None:
        """Every reward given, for the reward statistics ``score --normalize`` uses (not ratings)."""
        if self.kind == "pairs":
            return np.concatenate([self.chosen, self.rejected])
        if self.kind == "groups":
            return np.asarray([r for rewards, _ in self.groups for r in rewards], dtype=np.float64)
        return None

    @property
    def size(self) -> str:
        n = {"pairs": lambda: f"{len(self.chosen)} pairs", "groups": lambda: f"{len(self.groups)} groups",
             "ratings": lambda: f"{len(self.values)} rated responses"}
        return n[self.kind]()


def score_eval(model_dir: str, located, eval_ds, kind: str, use_gpu: bool) -> EvalScores:
    """Scores the tokenized eval data ``eval_ds`` (a Ray Dataset of ``kind``) with the model at ``model_dir``."""
    from rayreward.evaluation.scorer import Layout, RewardScorer

    layout = {"pairs": Layout("pairs", "pretokenized"), "groups": Layout("groups", "ranked")}.get(
        kind, Layout("single", "implicit_prompt"))
    with tempfile.TemporaryDirectory(prefix="rayreward-final-") as tmp:
        local = _storage.download_dir(model_dir, os.path.join(tmp, "model"), located)
        scorer = RewardScorer(local, layout, source="the run's eval data", device=None if use_gpu else "cpu")
    out = EvalScores(kind, spec=scorer.spec)
    chosen, rejected, values, labels = [], [], [], []
    for batch in eval_ds.iter_batches(batch_size=_BATCH_ROWS, batch_format="pyarrow"):
        if kind == "pairs":
            c_ids, r_ids = batch["input_ids_chosen"].to_pylist(), batch["input_ids_rejected"].to_pylist()
            rows = [{"input_ids_chosen": c, "attention_mask_chosen": [1] * len(c),
                     "input_ids_rejected": r, "attention_mask_rejected": [1] * len(r)} for c, r in zip(c_ids, r_ids)]
            rewards, _, _ = scorer.score_rows(rows)
            chosen.append(np.asarray(rewards["reward_chosen"]))
            rejected.append(np.asarray(rewards["reward_rejected"]))
        elif kind == "groups":
            responses, scores = batch["input_ids_responses"].to_pylist(), batch["scores"].to_pylist()
            rewards = scorer.rewards([s for group in responses for s in group]).tolist()
            start = 0
            for group, group_scores in zip(responses, scores):
                out.groups.append((rewards[start:start + len(group)], group_scores))
                start += len(group)
        else:
            values.append(scorer.attribute_values(batch["input_ids"].to_pylist()))
            labels.append(np.asarray(batch["labels"].to_pylist(), dtype=np.float64))
    if kind == "pairs":
        out.chosen, out.rejected = np.concatenate(chosen), np.concatenate(rejected)
    elif kind == "ratings":
        out.values, out.labels = np.concatenate(values), np.concatenate(labels)
        out.names = scorer.spec.names or ("reward",)
    return out


def eval_metrics(scores: EvalScores) -> dict[str, Any]:
    """The metrics of the scores' shape (see the module docstring), unprefixed."""
    if scores.kind == "pairs":
        from rayreward.core.metrics import headline_metrics

        return headline_metrics(scores.chosen, scores.rejected)
    if scores.kind == "groups":
        from rayreward.core.group_metrics import ranking_metrics

        m = ranking_metrics(scores.groups)
        keep = ("top1_accuracy", "best_of_k_accuracy", "pairwise_accuracy", "kendall_tau", "groups")
        return {**{k: m[k] for k in keep}, "accuracy": m["pairwise_accuracy"]}
    from rayreward.core.group_metrics import flat_rating_metrics, rating_metrics

    per = rating_metrics(scores.values, scores.labels, list(scores.names))
    return {**flat_rating_metrics(per), "rated_rows": len(scores.values)}


def eval_loss(scores: EvalScores, loss_type: str) -> float:
    """The loss the run trains with, on the scores (data margins and reward centering, training-time
    terms, left out): the pairwise loss, the groups' ``loss_type``, or the ratings' masked MSE
    (on standardised targets when the model was trained on them)."""
    import torch

    from rayreward.core.loss import ranking_loss, regression_loss

    if scores.kind == "pairs":
        return float(np.logaddexp(0.0, -(scores.chosen - scores.rejected)).mean())
    if scores.kind == "groups":
        rewards = torch.tensor([r for group, _ in scores.groups for r in group], dtype=torch.float64)
        targets = torch.tensor([s for _, group in scores.groups for s in group], dtype=torch.float64)
        index = torch.tensor([g for g, (group, _) in enumerate(scores.groups) for _ in group])
        return float(ranking_loss(loss_type if loss_type != "regression" else "bradley_terry", rewards, targets, index))
    spec, values = scores.spec, torch.as_tensor(scores.values)
    mean = std = None
    if spec is not None and spec.mean is not None and spec.std is not None:
        # values are in rating units; the head's outputs, and the loss, are in standard units.
        mean, std = torch.tensor(spec.mean, dtype=values.dtype), torch.tensor(spec.std, dtype=values.dtype)
        values = (values - mean) / std
    return float(regression_loss(values, torch.as_tensor(scores.labels), mean, std))


def summary_line(metrics: dict[str, Any], prefix: str = "final_") -> str:
    """One console line of the metrics of any shape (keys with ``prefix``)."""
    m = {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}
    if "top1_accuracy" in m:
        return (f"top-1 {m['top1_accuracy']:.3f} | best-of-K {m['best_of_k_accuracy']:.3f} | pairwise "
                f"{m['pairwise_accuracy']:.3f} | Kendall tau {_num(m['kendall_tau'])} ({m['groups']} groups)")
    if "rated_rows" in m:
        names = [k.removesuffix("/rmse") for k in m if k.endswith("/rmse")]
        parts = [f"{n} RMSE {_num(m[f'{n}/rmse'])}, Pearson {_num(m[f'{n}/pearson'])}" for n in names]
        return " | ".join(parts) + f" ({m['rated_rows']} rated responses)"
    from rayreward.core.metrics import format_headline

    return format_headline(m)


def _num(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
