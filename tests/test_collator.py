"""The collator on hand-written pairs: padded values, masks, margin, multiple-of."""

from __future__ import annotations

import pytest
import torch

from rayreward import RewardDataCollatorWithPadding
from rayreward.core import tiny
from rayreward.data.tokenizer import TOKENIZER_DIR


def pair(chosen, rejected, **extra):
    return {
        "input_ids_chosen": chosen,
        "attention_mask_chosen": [1] * len(chosen),
        "input_ids_rejected": rejected,
        "attention_mask_rejected": [1] * len(rejected),
        **extra,
    }


FEATURES = [pair([5, 6, 7], [8]), pair([9], [10, 11])]


def test_right_padding_values_and_masks(tokenizer):
    pad = tokenizer.pad_token_id
    batch = RewardDataCollatorWithPadding(tokenizer)(FEATURES)
    assert batch["input_ids_chosen"].tolist() == [[5, 6, 7], [9, pad, pad]]
    assert batch["attention_mask_chosen"].tolist() == [[1, 1, 1], [1, 0, 0]]
    # rejected is padded to the same length as chosen, so both fit one forward pass
    assert batch["input_ids_rejected"].tolist() == [[8, pad, pad], [10, 11, pad]]
    assert batch["attention_mask_rejected"].tolist() == [[1, 0, 0], [1, 1, 0]]
    assert batch["input_ids_chosen"].dtype == torch.long
    assert batch["return_loss"] is True
    assert "margin" not in batch


def test_left_padding(tokenizer):
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id
    batch = RewardDataCollatorWithPadding(tokenizer)(FEATURES)
    assert batch["input_ids_chosen"].tolist() == [[5, 6, 7], [pad, pad, 9]]
    assert batch["attention_mask_chosen"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["input_ids_rejected"].tolist() == [[pad, pad, 8], [pad, 10, 11]]
    assert batch["attention_mask_rejected"].tolist() == [[0, 0, 1], [0, 1, 1]]


def test_pad_to_multiple_of(tokenizer):
    pad = tokenizer.pad_token_id
    batch = RewardDataCollatorWithPadding(tokenizer, pad_to_multiple_of=4)(FEATURES)
    assert batch["input_ids_chosen"].shape == (2, 4)
    assert batch["input_ids_rejected"].tolist() == [[8, pad, pad, pad], [10, 11, pad, pad]]
    assert batch["attention_mask_chosen"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    # already a multiple: unchanged
    batch = RewardDataCollatorWithPadding(tokenizer, pad_to_multiple_of=3)(FEATURES)
    assert batch["input_ids_chosen"].shape == (2, 3)


def test_margin_becomes_a_float_tensor(tokenizer):
    features = [pair([5], [6], margin=1), pair([7], [8], margin=-0.5)]
    batch = RewardDataCollatorWithPadding(tokenizer)(features)
    assert batch["margin"].dtype == torch.float32
    assert batch["margin"].tolist() == [1.0, -0.5]


def test_padding_inside_pretokenized_rows_is_dropped(tokenizer):
    pad = tokenizer.pad_token_id
    features = [
        {
            "input_ids_chosen": [pad, 5, 6],
            "attention_mask_chosen": [0, 1, 1],
            "input_ids_rejected": torch.tensor([7, pad, pad, pad]),
            "attention_mask_rejected": torch.tensor([1, 0, 0, 0]),
        }
    ]
    batch = RewardDataCollatorWithPadding(tokenizer)(features)
    assert batch["input_ids_chosen"].tolist() == [[5, 6]]
    assert batch["input_ids_rejected"].tolist() == [[7, pad]]
    assert batch["attention_mask_rejected"].tolist() == [[1, 0]]


def test_tokenizer_without_pad_is_rejected():
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER_DIR / "tokenizer.json"), eos_token="</s>")
    with pytest.raises(ValueError, match="no pad token"):
        RewardDataCollatorWithPadding(tok)


def test_empty_batch_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="empty"):
        RewardDataCollatorWithPadding(tokenizer)([])
