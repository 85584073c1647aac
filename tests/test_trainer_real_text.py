"""Short runs on real preference text: hh-rlhf (harmless-base), found by the ``hh_dir`` fixture."""

from __future__ import annotations

import math

import pytest
import torch

from rayreward import RewardConfig

from rayreward import RewardTrainer
from conftest import read_jsonl


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_args(tmp_path, **overrides) -> RewardConfig:
    settings = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, per_device_eval_batch_size=16,
        learning_rate=1e-3, save_strategy="no", report_to=[], disable_tqdm=True, dataloader_pin_memory=False,
        logging_steps=2, seed=0,
    )
    settings.update(overrides)
    return RewardConfig(**settings)


def longest_side(tokenizer, row, eos: str | None) -> int:
    suffix = eos or ""
    return max(len(tokenizer(row[side] + suffix)["input_ids"]) for side in ("chosen", "rejected"))


def test_hh_rlhf_short_run_filters_and_counts_long_pairs(tmp_path, hh_dir, tokenizer, tiny_llama):
    train = read_jsonl(hh_dir / "train.jsonl", limit=160)
    evaluation = read_jsonl(hh_dir / "test.jsonl", limit=16)
    max_length = 256
    too_long = sum(longest_side(tokenizer, r, tokenizer.eos_token) > max_length for r in train)
    assert 0 < too_long < len(train)  # the subset has both kinds, so the check means something

    trainer = RewardTrainer(model=tiny_llama, args=make_args(tmp_path, max_length=max_length, max_steps=8),
                            tokenizer=tokenizer, train_dataset=train, eval_dataset=evaluation)
    stats = trainer.length_stats["train_dataset"]
    assert (stats.pairs, stats.filtered, stats.truncated) == (len(train), too_long, 0)
    assert stats.longest > max_length
    assert len(trainer.train_dataset) == len(train) - too_long
    assert trainer.length_stats["eval_dataset"].pairs == len(evaluation)
    assert all(max(len(p["input_ids_chosen"]), len(p["input_ids_rejected"])) <= max_length
               for p in trainer.train_dataset.pairs)

    before = {n: p.detach().clone() for n, p in tiny_llama.named_parameters()}
    result = trainer.train()
    assert math.isfinite(result.training_loss)
    assert not [n for n, p in tiny_llama.named_parameters() if torch.equal(p, before[n])]
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and math.isfinite(metrics["eval_loss"])


@pytest.mark.slow
def test_hh_rlhf_with_minilm_truncates_and_learns(tmp_path, hh_dir, minilm_dir):
    """A pretrained BERT (no EOS token: its tokenizer ends every text with [SEP])."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=1)
    train = read_jsonl(hh_dir / "train.jsonl", limit=16)
    max_length = 64
    too_long = sum(longest_side(tok, r, None) > max_length for r in train)
    assert too_long > 0

    trainer = RewardTrainer(
        model=model, tokenizer=tok, train_dataset=train, eval_dataset=train[:8],
        args=make_args(tmp_path, max_length=max_length, length_policy="truncate", max_steps=4, learning_rate=1e-4,
                       per_device_train_batch_size=4),
    )
    stats = trainer.length_stats["train_dataset"]
    assert (stats.truncated, stats.filtered) == (too_long, 0)
    assert len(trainer.train_dataset) == len(train)
    for p in trainer.train_dataset.pairs:
        ids = p["input_ids_rejected"]
        # [CLS] kept at the front (BERT reads its reward there), the end kept with its [SEP]
        assert len(ids) <= max_length and ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
        assert ids.count(tok.sep_token_id) == 1  # nothing appended: the tokenizer has no EOS

    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_loss"] < before["eval_loss"]
