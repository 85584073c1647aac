"""What ``RewardTrainer`` does with ranked groups and ratings (``rayreward.data.groups``).

A mixin of ``RewardTrainer``: the loss of a batch of groups or rated responses from one
forward pass, the attributes' combination into one reward, and the evaluation arrays and
metrics of groups (ranking metrics) and ratings (per-attribute RMSE and correlations).
"""

from __future__ import annotations

import logging
from typing import Mapping

import torch
from torch import nn

from rayreward.core.attention import ANY_UNIT
from rayreward.core.config import RewardConfig
from rayreward.core.group_data import GroupDataset, GroupStream
from rayreward.core.group_metrics import flat_rating_metrics, ranking_metrics, rating_metrics
from rayreward.core.loss import ranking_loss, regression_loss
from rayreward.core.packed import packed_group_rewards
from rayreward.data.feeding import BatchStream
from rayreward.data.group_collators import is_rating_batch

logger = logging.getLogger(__name__)


class GroupTraining:
    """``RewardTrainer``'s methods for groups and ratings (it sets ``data_kind`` and ``_attribute_stats``)."""

    @staticmethod
    def _data_kind(train_dataset, eval_dataset, args: RewardConfig) -> str:
        """``pairs``, ``groups`` or ``ratings``: what the data is, checked against ``loss_type``."""
        sets = [train_dataset] + (list(eval_dataset.values()) if isinstance(eval_dataset, Mapping) else [eval_dataset])
        kinds = {d.kind if isinstance(d, GroupDataset) else "pairs" for d in sets
                 if d is not None and not isinstance(d, (BatchStream, GroupStream))}
        streams = [d for d in sets if isinstance(d, (BatchStream, GroupStream))]
        kinds |= {getattr(d, "kind", "pairs") for d in streams}
        if len(kinds) > 1:
            raise ValueError(f"the train and eval data have different shapes ({', '.join(sorted(kinds))}); give "
                             "them one shape")
        kind = kinds.pop() if kinds else "pairs"
        if kind == "ratings" and args.loss_type != "regression":
            raise ValueError(f"ratings data (a 'response' and attribute columns) trains with loss_type='regression', "
                             f"not {args.loss_type!r}")
        if kind != "ratings" and args.loss_type == "regression":
            raise ValueError(f"loss_type='regression' needs ratings data ('prompt', 'response' and one column per "
                             f"attribute); this data is {kind}")
        if kind == "pairs" and args.loss_type == "plackett_luce":
            logger.info("plackett_luce on pairs is the Bradley-Terry loss without margin")
        backend = getattr(args, "attention_backend", "auto")
        if kind == "groups" and backend not in ("auto", "dense", *ANY_UNIT):
            logger.warning("attention_backend=%s splits the two branches of a pair; packed groups of K responses "
                           "use the dense mask instead (or set attention_backend to one of %s)", backend,
                           ", ".join(ANY_UNIT))
        return kind

    def compute_outputs(self, model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Head outputs ``(sequences, num_labels)`` of a batch of groups or ratings (one forward pass)."""
        if "packed_input_ids" in inputs:
            return packed_group_rewards(model, inputs, getattr(self.args, "attention_backend", "auto"))
        return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits.float()

    def combined_rewards(self, outputs: torch.Tensor) -> torch.Tensor:
        """Head outputs -> one reward per sequence (the attributes' weighted sum)."""
        if outputs.shape[-1] == 1:
            return outputs[:, 0]
        weights = torch.tensor(self.args.combination_weights(), dtype=outputs.dtype, device=outputs.device)
        return outputs @ weights

    def _group_loss(self, model, inputs, return_outputs: bool):
        outputs = self.compute_outputs(model, inputs)
        if is_rating_batch(inputs):
            stats = self._attribute_stats
            mean, std = (torch.tensor(s, device=outputs.device) for s in stats) if stats else (None, None)
            loss = regression_loss(outputs, inputs["ratings"], mean, std)
            result = {"outputs": outputs, "labels": inputs["ratings"]}
        else:
            rewards = self.combined_rewards(outputs)
            loss = ranking_loss(self.args.loss_type, rewards, inputs["scores"], inputs["group_index"],
                                self.args.center_rewards_coefficient)
            result = {"rewards": rewards, "scores": inputs["scores"], "group_index": inputs["group_index"]}
            if model.training:
                with torch.no_grad():
                    s, g, r = inputs["scores"], inputs["group_index"], rewards.detach()
                    prefer = (g[:, None] == g[None, :]) & (s[:, None] > s[None, :])
                    right = (r[:, None] > r[None, :]) & prefer
                    self._train_rewards["accuracy"].append((right.sum() / prefer.sum().clamp(min=1)).item())
                    self._train_rewards["rewards/mean"].append(r.mean().item())
        return (loss, result) if return_outputs else loss

    def _group_predictions(self, out: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rewards and scores of a batch of groups as ``(groups, width)`` arrays padded with NaN.

        The width is the largest group of the data, fixed so that the Trainer can
        concatenate the batches of an evaluation.
        """
        rewards, scores, index = out["rewards"].detach(), out["scores"], out["group_index"]
        groups, inverse = torch.unique(index, return_inverse=True)
        width = max(self._group_width(), int(torch.bincount(inverse).max()))
        r = torch.full((len(groups), width), float("nan"), device=rewards.device)
        s = torch.full((len(groups), width), float("nan"), device=rewards.device)
        slot = torch.zeros_like(inverse)
        seen = torch.zeros(len(groups), dtype=torch.long, device=index.device)
        for i, g in enumerate(inverse.tolist()):
            slot[i] = seen[g]
            seen[g] += 1
        r[inverse, slot] = rewards
        s[inverse, slot] = scores.to(r.dtype)
        return r, s

    def _group_width(self) -> int:
        sets = [self.train_dataset] + (list(self.eval_dataset.values()) if isinstance(self.eval_dataset, Mapping)
                                       else [self.eval_dataset])
        return max([d.max_group_size() for d in sets if isinstance(d, GroupDataset)] + [2])

    def _group_metrics(self, logits, labels) -> dict[str, float]:
        """Ranking metrics of ``(groups, width)`` arrays, or per-attribute rating metrics."""
        if self.data_kind == "groups":
            import numpy as np

            # NaN pads a group to the batch's width; across batches of a stream (whose
            # largest group is not known up front) the Trainer pads with -100 in both.
            real = [~np.isnan(s) & ~((s == -100) & (r == -100)) for r, s in zip(logits, labels)]
            groups = [(r[m], s[m]) for r, s, m in zip(logits, labels, real)]
            metrics = {k: v for k, v in ranking_metrics(groups).items()
                       if k in ("top1_accuracy", "best_of_k_accuracy", "pairwise_accuracy", "kendall_tau")}
            metrics["accuracy"] = metrics["pairwise_accuracy"]
            return metrics
        from rayreward.core.attributes import attribute_spec

        spec = attribute_spec(self.model.config)
        values = spec.values(torch.as_tensor(logits)).numpy()
        return flat_rating_metrics(rating_metrics(values, labels, list(spec.names) or ["reward"]))
