"""Pads pre-tokenized preference pairs into one batch."""

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
        length = max(len(s) for s in chosen + rejected)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        pad_id = self.tokenizer.pad_token_id
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        batch = {}
        for side, seqs in (("chosen", chosen), ("rejected", rejected)):
            ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
            mask = torch.zeros((len(seqs), length), dtype=torch.long)
            for i, s in enumerate(seqs):
                span = slice(length - len(s), length) if left else slice(0, len(s))
                ids[i, span] = torch.as_tensor(s, dtype=torch.long)
                mask[i, span] = 1
            batch[f"input_ids_{side}"] = ids
            batch[f"attention_mask_{side}"] = mask
        if "margin" in features[0]:
            batch["margin"] = torch.tensor([float(f["margin"]) for f in features], dtype=torch.float)
        batch["return_loss"] = True
        return batch


def real_token_ids(feature: Mapping[str, Any], side: str) -> list[int]:
    """The ids of one side of a pair, without the positions its mask marks as padding."""
    ids = feature[f"input_ids_{side}"]
    ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    mask = feature.get(f"attention_mask_{side}")
    if mask is None:
        return ids
    mask = mask.tolist() if hasattr(mask, "tolist") else list(mask)
    return [t for t, m in zip(ids, mask) if m]
