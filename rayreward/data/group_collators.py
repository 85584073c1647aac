"""Batches of ranked groups and of rated responses, padded or packed.

A batch of groups is flat: every response of every group is one sequence, and
``group_index`` says which group it belongs to, so one forward pass gives every reward
the group losses need (``rayreward.core.loss``). A batch of ratings is one sequence per
rated response with its labels (NaN = not rated).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from rayreward.data.collators import pad_sequences


def _ids(value: Any) -> list[int]:
    value = value.tolist() if hasattr(value, "tolist") else value
    return [int(t) for t in value]


def is_group_feature(feature: Mapping[str, Any]) -> bool:
    """Whether a tokenized example is a ranked group (``input_ids_responses`` + ``scores``)."""
    return "input_ids_responses" in feature


def is_rating_feature(feature: Mapping[str, Any]) -> bool:
    """Whether a tokenized example is a rated response (``input_ids`` + ``labels``)."""
    return "labels" in feature and "input_ids" in feature


def group_sequences(features: Sequence[Mapping[str, Any]]) -> tuple[list[list[int]], list[float], list[int]]:
    """The responses of a batch of groups, flat: ``(sequences, scores, group_index)``."""
    seqs, scores, index = [], [], []
    for g, f in enumerate(features):
        responses = f["input_ids_responses"]
        responses = responses.tolist() if hasattr(responses, "tolist") else responses
        group_scores = f["scores"].tolist() if hasattr(f["scores"], "tolist") else f["scores"]
        for ids, score in zip(responses, group_scores):
            seqs.append(_ids(ids))
            scores.append(float(score))
            index.append(g)
    return seqs, scores, index


@dataclass
class GroupCollator:
    """Pads the responses of ranked groups, or rated responses, into one batch.

    Args:
        pad_token_id: the id padding positions get.
        padding_side: ``right`` (default) or ``left``.
        pad_to_multiple_of: round the padded length up to a multiple of this.

    Returns (when called):
        Groups: ``input_ids`` and ``attention_mask`` ``(responses, length)``, ``scores``
        and ``group_index`` ``(responses,)``. Ratings: ``input_ids``, ``attention_mask``
        and ``ratings`` ``(rows, attributes)`` (NaN = not rated). Both with ``return_loss``.

    Example:
        >>> GroupCollator(0)([{"input_ids_responses": [[5, 6], [7]], "scores": [1.0, 0.0]}])["group_index"]
        tensor([0, 0])
    """

    pad_token_id: int
    padding_side: str = "right"
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty list of examples")
        left = self.padding_side == "left"
        if is_group_feature(features[0]):
            seqs, scores, index = group_sequences(features)
            ids, mask = pad_sequences(seqs, self.pad_token_id, left=left, pad_to_multiple_of=self.pad_to_multiple_of)
            return {"input_ids": ids, "attention_mask": mask, "scores": torch.tensor(scores, dtype=torch.float),
                    "group_index": torch.tensor(index, dtype=torch.long), "return_loss": True}
        seqs = [_ids(f["input_ids"]) for f in features]
        ids, mask = pad_sequences(seqs, self.pad_token_id, left=left, pad_to_multiple_of=self.pad_to_multiple_of)
        labels = [[float("nan") if v is None else float(v) for v in
                   (f["labels"].tolist() if hasattr(f["labels"], "tolist") else f["labels"])] for f in features]
        return {"input_ids": ids, "attention_mask": mask, "ratings": torch.tensor(labels, dtype=torch.float),
                "return_loss": True}


def is_group_batch(batch: Mapping[str, Any]) -> bool:
    """Whether a collated batch holds ranked groups (padded or packed)."""
    return "group_index" in batch


def is_rating_batch(batch: Mapping[str, Any]) -> bool:
    """Whether a collated batch holds rated responses."""
    return "ratings" in batch


__all__ = ["GroupCollator", "group_sequences", "is_group_batch", "is_group_feature", "is_rating_batch",
           "is_rating_feature"]
