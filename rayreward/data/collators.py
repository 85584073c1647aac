"""Pads pre-tokenized preference pairs into one batch.

Two collators for the two API generations. Both read a pair in either layout: the
seed's ``input_ids_chosen``/``attention_mask_chosen``/... or TRL 1.x's
``chosen_ids``/``rejected_ids``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch


@dataclass
class RewardDataCollatorWithPadding:
    """Pads chosen and rejected sequences of a batch to one common length.

    Chosen and rejected are padded together so that the trainer can run them through
    the model as one concatenated batch. Padding goes on the tokenizer's padding side
    (right by default) with its pad token id, and the masks mark it with 0.

    Args:
        tokenizer: supplies ``pad_token_id`` and ``padding_side``.
        pad_to_multiple_of: round the padded length up to a multiple of this.
        return_tensors: only ``"pt"`` is supported.

    Example:
        >>> collate = RewardDataCollatorWithPadding(tokenizer)
        >>> batch = collate([{"input_ids_chosen": [5, 6], "attention_mask_chosen": [1, 1],
        ...                   "input_ids_rejected": [7], "attention_mask_rejected": [1]}])
        >>> batch["input_ids_rejected"]  # tensor([[7, pad]])
    """

    tokenizer: Any
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"

    def __post_init__(self):
        if self.return_tensors != "pt":
            raise ValueError(f"return_tensors={self.return_tensors!r} is not supported; use 'pt'")
        if getattr(self.tokenizer, "pad_token_id", None) is None:
            raise ValueError(
                "the tokenizer has no pad token; set one (tokenizer.pad_token = tokenizer.eos_token, "
                "or add a new one) before building the collator"
            )

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty list of pairs")
        chosen = [real_token_ids(f, "chosen") for f in features]
        rejected = [real_token_ids(f, "rejected") for f in features]
        # One length for both sides: the trainer runs them as one concatenated batch.
        ids, mask = pad_sequences(chosen + rejected, self.tokenizer.pad_token_id,
                                  left=getattr(self.tokenizer, "padding_side", "right") == "left",
                                  pad_to_multiple_of=self.pad_to_multiple_of)
        n = len(features)
        batch = {"input_ids_chosen": ids[:n], "attention_mask_chosen": mask[:n],
                 "input_ids_rejected": ids[n:], "attention_mask_rejected": mask[n:]}
        if "margin" in features[0]:
            batch["margin"] = torch.tensor([float(f["margin"]) for f in features], dtype=torch.float)
        batch["return_loss"] = True
        return batch


@dataclass
class DataCollatorForPreference:
    """TRL 1.x's preference collator: one concatenated batch, chosen rows first.

    Each example has ``chosen_ids`` and ``rejected_ids`` (or the seed's
    ``input_ids_chosen``/``input_ids_rejected`` with their masks) and optionally
    ``margin``. The output has ``input_ids`` and ``attention_mask`` of shape
    ``(2 * batch, length)``, right-padded, rows ``0..batch-1`` the chosen sequences and
    the rest the rejected ones in the same order, plus ``margin`` when the examples
    have it.

    Args:
        pad_token_id: the id padding positions get.
        pad_to_multiple_of: round the padded length up to a multiple of this.
        return_tensors: only ``"pt"`` is supported.

    Example:
        >>> collate = DataCollatorForPreference(pad_token_id=0)
        >>> collate([{"chosen_ids": [1, 2, 3], "rejected_ids": [4]}])["input_ids"]
        tensor([[1, 2, 3],
                [4, 0, 0]])
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"

    def __post_init__(self):
        if self.return_tensors != "pt":
            raise ValueError(f"return_tensors={self.return_tensors!r} is not supported; use 'pt'")
        if not isinstance(self.pad_token_id, int):
            raise ValueError(f"pad_token_id: got {self.pad_token_id!r}; expected the tokenizer's pad token id")

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty list of pairs")
        seqs = [real_token_ids(e, "chosen") for e in examples] + [real_token_ids(e, "rejected") for e in examples]
        ids, mask = pad_sequences(seqs, self.pad_token_id, pad_to_multiple_of=self.pad_to_multiple_of)
        batch = {"input_ids": ids, "attention_mask": mask}
        if "margin" in examples[0]:
            batch["margin"] = torch.tensor([float(e["margin"]) for e in examples], dtype=torch.float)
        return batch


def pad_sequences(
    seqs: Sequence[Sequence[int]], pad_token_id: int, *, left: bool = False, pad_to_multiple_of: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pads token id lists into ``(ids, attention_mask)`` tensors of one length.

    ``tokenizer.pad`` does the same but needs a tokenizer; the collators here take only
    a pad id (as TRL's does) so a Ray worker can collate without loading one.

    Args:
        seqs: the sequences (lists of ids).
        pad_token_id: the id of padding positions.
        left: pad on the left instead of the right.
        pad_to_multiple_of: round the length up to a multiple of this.
    """
    length = max(len(s) for s in seqs)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    ids = torch.full((len(seqs), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        span = slice(length - len(s), length) if left else slice(0, len(s))
        ids[i, span] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def real_token_ids(feature: Mapping[str, Any], side: str) -> list[int]:
    """The ids of one side of a pair, without the positions its mask marks as padding.

    Reads the seed's ``input_ids_<side>`` (with its mask) or TRL 1.x's ``<side>_ids``.
    """
    if f"input_ids_{side}" not in feature and f"{side}_ids" in feature:
        ids = feature[f"{side}_ids"]
        return ids.tolist() if hasattr(ids, "tolist") else list(ids)
    ids = feature[f"input_ids_{side}"]
    ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    mask = feature.get(f"attention_mask_{side}")
    if mask is None:
        return ids
    mask = mask.tolist() if hasattr(mask, "tolist") else list(mask)
    return [t for t, m in zip(ids, mask) if m]
