"""The pairwise reward loss: a pure function over tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_loss(
    rewards_chosen: torch.Tensor,
    rewards_rejected: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_rewards_coefficient: float | None = None,
) -> torch.Tensor:
    """Bradley-Terry loss: ``mean(-logsigmoid(r_chosen - r_rejected - margin))``.

    With ``center_rewards_coefficient`` set, adds
    ``coefficient * mean((r_chosen + r_rejected) ** 2)``, which pulls the rewards
    towards zero mean (Eisenstein et al., 2023), as TRL does.

    Args:
        rewards_chosen: shape ``(batch,)``.
        rewards_rejected: shape ``(batch,)``.
        margin: optional shape ``(batch,)``; how much the chosen reward should exceed
            the rejected one.
        center_rewards_coefficient: optional weight of the centering term.

    Example:
        >>> pairwise_loss(torch.tensor([1.0]), torch.tensor([1.0]))
        tensor(0.6931)
    """
    diff = rewards_chosen - rewards_rejected
    if margin is not None:
        diff = diff - margin.to(diff.dtype)
    loss = -F.logsigmoid(diff).mean()
    if center_rewards_coefficient is not None:
        loss = loss + center_rewards_coefficient * torch.mean((rewards_chosen + rewards_rejected) ** 2)
    return loss


# -- groups of K responses and ratings ------------------------------------------------
#
# A batch of groups is flat: ``rewards`` holds every response of every group, and
# ``group_index`` says which group each belongs to, so that one forward pass over the K
# responses of a group (padded or packed) feeds every loss below.



def _preferences(scores: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """``(N, N)`` bool: True where response i is preferred to response j of the same group."""
    same = group_index[:, None] == group_index[None, :]
    return same & (scores[:, None] > scores[None, :])


def _centering(rewards: torch.Tensor, group_index: torch.Tensor, coefficient: float) -> torch.Tensor:
    # TRL's pair term is mean((r_c + r_r)^2); a group of K generalises it to
    # (2/K * sum of its rewards)^2, the same number for K = 2.
    groups, inverse = torch.unique(group_index, return_inverse=True)
    sums = torch.zeros(len(groups), dtype=rewards.dtype, device=rewards.device).index_add(0, inverse, rewards)
    counts = torch.zeros(len(groups), dtype=rewards.dtype, device=rewards.device).index_add(
        0, inverse, torch.ones_like(rewards))
    return coefficient * torch.mean((sums * (2.0 / counts)) ** 2)


def group_bradley_terry_loss(
    rewards: torch.Tensor,
    scores: torch.Tensor,
    group_index: torch.Tensor,
    center_rewards_coefficient: float | None = None,
) -> torch.Tensor:
    """Bradley-Terry over every ordered pair of each group: ``mean(-logsigmoid(r_i - r_j))``.

    The mean runs over all pairs ``(i, j)`` of a group with ``score_i > score_j`` (ties
    make no pair), across the batch: the loss of training on the expanded pairs, from
    one reward per response instead of one forward pass per pair. A group of two is
    exactly ``pairwise_loss``.

    Args:
        rewards: ``(N,)``, one reward per response of the batch's groups.
        scores: ``(N,)``, higher is better within a group; equal scores are ties.
        group_index: ``(N,)``, the group of each response.
        center_rewards_coefficient: optional weight of ``mean_groups((2/K * sum r)^2)``.

    Example:
        >>> group_bradley_terry_loss(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0]), torch.tensor([0, 0]))
        tensor(0.6931)
    """
    better, worse = _preferences(scores, group_index).nonzero(as_tuple=True)
    if better.numel() == 0:
        raise ValueError("no preference in the batch: every group's responses are tied")
    loss = -F.logsigmoid(rewards[better] - rewards[worse]).mean()
    if center_rewards_coefficient is not None:
        loss = loss + _centering(rewards, group_index, center_rewards_coefficient)
    return loss


def plackett_luce_loss(
    rewards: torch.Tensor,
    scores: torch.Tensor,
    group_index: torch.Tensor,
    center_rewards_coefficient: float | None = None,
) -> torch.Tensor:
    """Negative Plackett-Luce log-likelihood of each group's order, averaged over groups.

    The observed order is read as successive choices: the best response is chosen
    from all K, the next from the rest, and so on, each with probability
    ``exp(r_i) / sum(exp(r_j))`` over the responses still left. Ties are handled as
    Breslow does in survival analysis (the documented choice): a response's
    denominator is itself, the responses it ties with and every response it beats; the
    responses of the last tier beat nothing and add no term. So tied responses are
    never pushed apart, and a group of two is ``-logsigmoid(r_1 - r_2)``, the pair loss.

    Per group: ``sum over responses i that beat some response of
    -(r_i - logsumexp_{j: s_j <= s_i} r_j)``; the loss is the mean over groups.

    Args:
        rewards: ``(N,)``, one reward per response of the batch's groups.
        scores: ``(N,)``, higher is better within a group; equal scores are ties.
        group_index: ``(N,)``, the group of each response.
        center_rewards_coefficient: optional weight of ``mean_groups((2/K * sum r)^2)``.
    """
    same = group_index[:, None] == group_index[None, :]
    below_or_tied = same & (scores[None, :] <= scores[:, None])
    active = _preferences(scores, group_index).any(dim=1)
    if not active.any():
        raise ValueError("no preference in the batch: every group's responses are tied")
    masked = rewards[None, :].expand(len(rewards), -1).masked_fill(~below_or_tied, float("-inf"))
    terms = rewards - torch.logsumexp(masked, dim=1)
    n_groups = torch.unique(group_index[active]).numel()
    loss = -terms[active].sum() / n_groups
    if center_rewards_coefficient is not None:
        loss = loss + _centering(rewards, group_index, center_rewards_coefficient)
    return loss


def ranking_loss(
    loss_type: str,
    rewards: torch.Tensor,
    scores: torch.Tensor,
    group_index: torch.Tensor,
    center_rewards_coefficient: float | None = None,
) -> torch.Tensor:
    """The ranking loss named by ``loss_type`` (``bradley_terry`` or ``plackett_luce``)."""
    if loss_type == "bradley_terry":
        return group_bradley_terry_loss(rewards, scores, group_index, center_rewards_coefficient)
    if loss_type == "plackett_luce":
        return plackett_luce_loss(rewards, scores, group_index, center_rewards_coefficient)
    raise ValueError(f"loss_type {loss_type!r} does not rank responses; use 'bradley_terry' or 'plackett_luce'")


def regression_loss(
    predictions: torch.Tensor,
    labels: torch.Tensor,
    mean: torch.Tensor | None = None,
    std: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Masked mean squared error over the rated cells of ``(rows, attributes)``.

    A NaN label means "not rated" and adds nothing. With ``mean`` and ``std`` (one per
    attribute) the targets are standardised first, ``(label - mean) / std``, so the
    head predicts each attribute in standard units and attributes on different scales
    weigh alike. ``weights`` (one per attribute) weight each cell's squared error; the
    sum is divided by the total weight of the rated cells.

    Args:
        predictions: ``(rows, attributes)`` head outputs.
        labels: ``(rows, attributes)``, NaN where not rated.
        mean: optional ``(attributes,)`` target means.
        std: optional ``(attributes,)`` target standard deviations (> 0).
        weights: optional ``(attributes,)`` non-negative weights.

    Example:
        >>> regression_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[3.0, float("nan")]]))
        tensor(4.)
    """
    labels = labels.to(predictions.dtype)
    rated = ~torch.isnan(labels)
    if not rated.any():
        raise ValueError("no rated cell in the batch: every label is missing")
    targets = labels
    if mean is not None and std is not None:
        targets = (labels - mean.to(labels)) / std.to(labels)
    cell = torch.ones_like(predictions) if weights is None else weights.to(predictions).expand_as(predictions)
    cell = cell * rated
    err = torch.where(rated, predictions - torch.nan_to_num(targets), torch.zeros_like(predictions)) ** 2
    return (err * cell).sum() / cell.sum()
