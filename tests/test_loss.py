"""The pairwise loss and the reward metrics against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rayreward import pairwise_loss

from rayreward import reward_metrics


def softplus(x: float) -> float:
    # -logsigmoid(d) == log(1 + exp(-d)) == softplus(-d)
    return math.log1p(math.exp(x))


CHOSEN = torch.tensor([2.0, 0.0, 1.0])
REJECTED = torch.tensor([1.0, 0.0, 3.0])  # differences: 1, 0 (a tie), -2


def test_loss_without_margin():
    expected = (softplus(-1.0) + softplus(0.0) + softplus(2.0)) / 3
    assert pairwise_loss(CHOSEN, REJECTED).item() == pytest.approx(expected, rel=1e-6)
    # log(2) for equal rewards, the documented example
    assert pairwise_loss(torch.tensor([1.0]), torch.tensor([1.0])).item() == pytest.approx(math.log(2), rel=1e-6)


def test_loss_with_margin_subtracts_it():
    margin = torch.tensor([0.5, 1.0, -1.0])  # shifted differences: 0.5, -1, -1
    expected = (softplus(-0.5) + softplus(1.0) + softplus(1.0)) / 3
    assert pairwise_loss(CHOSEN, REJECTED, margin).item() == pytest.approx(expected, rel=1e-6)


def test_margin_dtype_follows_rewards():
    margin = torch.tensor([0.5, 1.0, -1.0], dtype=torch.float64)
    loss = pairwise_loss(CHOSEN, REJECTED, margin)
    assert loss.dtype == torch.float32


def test_centering_term():
    coefficient = 0.01
    base = (softplus(-1.0) + softplus(0.0) + softplus(2.0)) / 3
    centering = coefficient * (3.0**2 + 0.0**2 + 4.0**2) / 3  # mean((r_c + r_r)^2)
    got = pairwise_loss(CHOSEN, REJECTED, center_rewards_coefficient=coefficient).item()
    assert got == pytest.approx(base + centering, rel=1e-6)


def test_centering_with_margin():
    margin = torch.tensor([0.5, 1.0, -1.0])
    expected = (softplus(-0.5) + 2 * softplus(1.0)) / 3 + 0.1 * 25 / 3
    got = pairwise_loss(CHOSEN, REJECTED, margin, center_rewards_coefficient=0.1).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_gradient_pushes_chosen_up_and_rejected_down():
    chosen = CHOSEN.clone().requires_grad_()
    rejected = REJECTED.clone().requires_grad_()
    pairwise_loss(chosen, rejected).backward()
    # d/d r_c of softplus(-(r_c - r_r)) / n == -sigmoid(-(r_c - r_r)) / n
    expected = torch.tensor([-torch.sigmoid(torch.tensor(-d)).item() / 3 for d in (1.0, 0.0, -2.0)])
    torch.testing.assert_close(chosen.grad, expected)
    torch.testing.assert_close(rejected.grad, -expected)


def test_metrics_by_hand_and_ties_count_as_wrong():
    metrics = reward_metrics(CHOSEN, REJECTED)
    assert metrics["accuracy"] == pytest.approx(1 / 3)  # the tie (0 vs 0) is not a win
    assert metrics["rewards/chosen"] == pytest.approx(1.0)
    assert metrics["rewards/rejected"] == pytest.approx(4 / 3)
    assert metrics["rewards/margin"] == pytest.approx(-1 / 3)


def test_metrics_all_ties_is_zero_accuracy_and_accepts_lists():
    metrics = reward_metrics([0.5, 0.5], [0.5, 0.5])
    assert metrics["accuracy"] == 0.0
    assert metrics["rewards/margin"] == 0.0
    assert reward_metrics([], []) == {}
