"""What a reward model is worth on a set of pairs: pure functions over reward arrays.

Everything here takes the rewards of the chosen and rejected answers (anything
``numpy.asarray`` takes) and returns plain dicts of floats, ready for JSON. No model,
no Ray: ``rayreward evaluate`` and the trainer's end-of-run summary both call these.

Calibration follows the Bradley-Terry reading of a reward model: the probability that
answer ``a`` is preferred to ``b`` is ``sigmoid(r_a - r_b)``. For each pair the model
prefers the answer with the higher reward, with confidence
``sigmoid(|r_chosen - r_rejected|)`` in [0.5, 1]; it is right when that answer is the
chosen one (a tie is wrong, with confidence 0.5). The reliability table bins pairs by
that confidence and compares each bin's mean confidence with its observed accuracy;
the expected calibration error (ECE) is the pair-weighted mean of their gaps (Guo et
al., 2017). A calibrated model that says 0.8 is right on 80% of such pairs.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

DEFAULT_BINS = 10
DEFAULT_LENGTH_BUCKETS = 4


def _pairs(rewards_chosen, rewards_rejected) -> tuple[np.ndarray, np.ndarray]:
    chosen = np.asarray(rewards_chosen, dtype=np.float64).ravel()
    rejected = np.asarray(rewards_rejected, dtype=np.float64).ravel()
    if chosen.shape != rejected.shape:
        raise ValueError(f"got {chosen.size} chosen rewards but {rejected.size} rejected rewards; expected one of each per pair")
    return chosen, rejected


def preference_probability(diff) -> np.ndarray:
    """``sigmoid(diff)``: the Bradley-Terry probability that the first answer wins."""
    d = np.asarray(diff, dtype=np.float64)
    # exp of a negative number only, so large |diff| neither overflows nor warns.
    e = np.exp(-np.abs(d))
    return np.where(d >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def calibration(rewards_chosen, rewards_rejected, n_bins: int = DEFAULT_BINS) -> dict[str, Any]:
    """Expected calibration error and the reliability table of the preference probability.

    Args:
        rewards_chosen: rewards of the chosen answers, one per pair.
        rewards_rejected: rewards of the rejected answers.
        n_bins: equal-width confidence bins over [0.5, 1].

    Returns:
        ``{"ece": float, "bins": [{"low", "high", "count", "confidence", "accuracy"}]}``;
        empty bins have ``count`` 0 and None for the means.

    Example:
        >>> round(calibration([2.0, 0.0], [0.0, 2.0], n_bins=2)["ece"], 4)  # 0.88 twice, right once
        0.3808
    """
    if n_bins < 1:
        raise ValueError(f"n_bins: got {n_bins}; expected a positive integer")
    chosen, rejected = _pairs(rewards_chosen, rewards_rejected)
    diff = chosen - rejected
    confidence = preference_probability(np.abs(diff))
    correct = diff > 0
    edges = np.linspace(0.5, 1.0, n_bins + 1)
    index = np.clip(np.floor((confidence - 0.5) / (0.5 / n_bins)).astype(int), 0, n_bins - 1)
    bins, ece, n = [], 0.0, diff.size
    for b in range(n_bins):
        members = index == b
        count = int(members.sum())
        conf = float(confidence[members].mean()) if count else None
        acc = float(correct[members].mean()) if count else None
        if count:
            ece += count / n * abs(acc - conf)
        bins.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": count, "confidence": conf, "accuracy": acc})
    return {"ece": float(ece) if n else float("nan"), "bins": bins}


def headline_metrics(rewards_chosen, rewards_rejected, n_bins: int = DEFAULT_BINS) -> dict[str, float]:
    """The three numbers that sum up a reward model: accuracy, mean margin and ECE.

    The trainer's end-of-run summary and ``rayreward evaluate`` report these, so a run's
    last line and a later evaluation of its export can be compared directly.

    Args:
        rewards_chosen: rewards of the chosen answers, one per pair.
        rewards_rejected: rewards of the rejected answers.
        n_bins: confidence bins of the ECE.

    Returns:
        ``{"accuracy", "mean_margin", "ece", "pairs"}``; accuracy counts ties as wrong.

    Example:
        >>> headline_metrics([1.0, 2.0], [0.0, 3.0])["accuracy"]
        0.5
    """
    chosen, rejected = _pairs(rewards_chosen, rewards_rejected)
    if chosen.size == 0:
        raise ValueError("no pairs to summarise")
    diff = chosen - rejected
    return {
        "accuracy": float((diff > 0).mean()),
        "mean_margin": float(diff.mean()),
        "ece": calibration(chosen, rejected, n_bins)["ece"],
        "pairs": int(diff.size),
    }


def format_headline(metrics: dict[str, float]) -> str:
    """One line for logs: ``accuracy 0.912 | mean margin 1.234 | ECE 0.041 (1000 pairs)``."""
    line = f"accuracy {metrics['accuracy']:.3f} | mean margin {metrics['mean_margin']:.3f} | ECE {metrics['ece']:.3f}"
    return line + (f" ({metrics['pairs']} pairs)" if "pairs" in metrics else "")


def reward_statistics(rewards_chosen, rewards_rejected) -> dict[str, float]:
    """Accuracy, ties, means and standard deviations, log loss and Brier score."""
    chosen, rejected = _pairs(rewards_chosen, rewards_rejected)
    diff = chosen - rejected
    p = preference_probability(diff)
    # -log(sigmoid(d)) = log1p(exp(-d)), computed stably for both signs.
    log_loss = np.maximum(-diff, 0) + np.log1p(np.exp(-np.abs(diff)))
    return {
        "pairs": int(diff.size),
        "accuracy": float((diff > 0).mean()),
        "ties": int((diff == 0).sum()),
        "chosen_mean": float(chosen.mean()),
        "chosen_std": float(chosen.std()),
        "rejected_mean": float(rejected.mean()),
        "rejected_std": float(rejected.std()),
        "margin_mean": float(diff.mean()),
        "margin_std": float(diff.std()),
        "reward_mean": float(np.concatenate([chosen, rejected]).mean()),
        "reward_std": float(np.concatenate([chosen, rejected]).std()),
        "log_loss": float(log_loss.mean()),
        "brier": float(((1.0 - p) ** 2).mean()),
    }


def accuracy_by(keys: Sequence[Any], rewards_chosen, rewards_rejected) -> list[dict[str, Any]]:
    """Accuracy and mean margin per value of ``keys`` (one key per pair), largest group first."""
    chosen, rejected = _pairs(rewards_chosen, rewards_rejected)
    keys = np.asarray([str(k) for k in keys], dtype=object)
    if keys.size != chosen.size:
        raise ValueError(f"got {keys.size} keys for {chosen.size} pairs")
    diff = chosen - rejected
    rows = []
    for key in dict.fromkeys(keys.tolist()):
        members = keys == key
        rows.append({
            "group": key,
            "count": int(members.sum()),
            "accuracy": float((diff[members] > 0).mean()),
            "mean_margin": float(diff[members].mean()),
        })
    return sorted(rows, key=lambda r: (-r["count"], r["group"]))


def length_buckets(lengths, n_buckets: int = DEFAULT_LENGTH_BUCKETS) -> tuple[list[str], list[str]]:
    """Quantile buckets of pair lengths (in tokens).

    Returns:
        ``(labels, order)``: a label such as ``"65-128 tokens"`` per pair, and the labels
        from shortest to longest bucket.
    """
    lengths = np.asarray(lengths, dtype=np.int64).ravel()
    if lengths.size == 0:
        return [], []
    edges = np.unique(np.quantile(lengths, np.linspace(0, 1, n_buckets + 1)[1:-1], method="lower"))
    index = np.searchsorted(edges, lengths, side="left")
    bounds = [int(lengths.min())] + [int(e) for e in edges] + [int(lengths.max())]
    names = []
    for b in range(len(edges) + 1):
        low = bounds[b] if b == 0 else bounds[b] + 1
        names.append(f"{low}-{bounds[b + 1]} tokens" if low < bounds[b + 1] else f"{low} tokens")
    labels = [names[i] for i in index]
    return labels, [n for i, n in enumerate(names) if (index == i).any()]


def evaluation_metrics(
    rewards_chosen,
    rewards_rejected,
    lengths=None,
    groups: Sequence[Any] | None = None,
    n_bins: int = DEFAULT_BINS,
    n_length_buckets: int = DEFAULT_LENGTH_BUCKETS,
) -> dict[str, Any]:
    """Everything ``rayreward evaluate`` writes to ``metrics.json``.

    Args:
        rewards_chosen: rewards of the chosen answers, one per pair.
        rewards_rejected: rewards of the rejected answers.
        lengths: tokens per pair (the longer side); adds ``by_length``.
        groups: a group name per pair (e.g. the subset); adds ``by_group``.
        n_bins: confidence bins of the calibration.
        n_length_buckets: quantile buckets of ``by_length``.

    Returns:
        ``reward_statistics`` plus ``ece``, ``calibration_bins`` and, when given,
        ``by_length`` and ``by_group`` tables.
    """
    out: dict[str, Any] = reward_statistics(rewards_chosen, rewards_rejected)
    cal = calibration(rewards_chosen, rewards_rejected, n_bins)
    out["ece"] = cal["ece"]
    out["calibration_bins"] = cal["bins"]
    if lengths is not None:
        labels, order = length_buckets(lengths, n_length_buckets)
        table = {row["group"]: row for row in accuracy_by(labels, rewards_chosen, rewards_rejected)}
        out["by_length"] = [dict(table[name], group=name) for name in order]
    if groups is not None:
        out["by_group"] = accuracy_by(groups, rewards_chosen, rewards_rejected)
    return out


def reward_metrics(rewards_chosen, rewards_rejected) -> dict[str, float]:
    """Accuracy (a tie counts as wrong) and reward statistics of a set of pairs.

    Accepts tensors or anything ``torch.as_tensor`` takes.
    """
    import torch

    chosen = torch.as_tensor(rewards_chosen, dtype=torch.float64).flatten()
    rejected = torch.as_tensor(rewards_rejected, dtype=torch.float64).flatten()
    if chosen.numel() == 0:
        return {}
    diff = chosen - rejected
    return {
        "accuracy": (diff > 0).double().mean().item(),
        "rewards/chosen": chosen.mean().item(),
        "rewards/rejected": rejected.mean().item(),
        "rewards/margin": diff.mean().item(),
    }
