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
