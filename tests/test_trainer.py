"""RewardTrainer with a tiny Llama built from a config and the bundled tokenizer."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from datasets import Dataset
from torch import nn

from rayreward import DataFormatError

from rayreward import RewardConfig

from rayreward import RewardTrainer

from rayreward import pairwise_loss

from rayreward.core import tiny

from rayreward.data.tokenizer import builtin_tokenizer, TOKENIZER_DIR
from rayreward.data.formats import PairEncoder
from rayreward.data.tokenizer import SAMPLE_DATA_DIR


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_args(tmp_path, **overrides) -> RewardConfig:
    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=16,
        per_device_eval_batch_size=32,
        learning_rate=1e-3,
        num_train_epochs=1,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_pin_memory=False,
        seed=0,
    )
    settings.update(overrides)
    return RewardConfig(**settings)


@pytest.fixture(scope="module")
def sample(request):
    from conftest import read_jsonl

    return read_jsonl(SAMPLE_DATA_DIR / "train.jsonl"), read_jsonl(SAMPLE_DATA_DIR / "eval.jsonl")


def batches(trainer, dataset):
    return list(trainer.get_eval_dataloader(dataset))


# -- learning -----------------------------------------------------------------------


def test_training_learns_the_sample_task_and_changes_every_parameter(tmp_path, tokenizer, tiny_llama, sample):
    train, evaluation = sample
    trainer = RewardTrainer(
        model=tiny_llama,
        args=make_args(tmp_path, eval_strategy="no"),
        tokenizer=tokenizer,
        train_dataset=Dataset.from_list(train),  # a datasets.Dataset, as in the seed
        eval_dataset=evaluation,  # and a plain list of dicts
    )
    before_params = {n: p.detach().clone() for n, p in tiny_llama.named_parameters() if p.requires_grad}
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()

    assert after["eval_loss"] < before["eval_loss"] - 0.1
    assert after["eval_accuracy"] > 0.7, after  # the task is learnable: well above chance
    assert after["eval_rewards/margin"] > before["eval_rewards/margin"]
    assert after["eval_rewards/margin"] == pytest.approx(
        after["eval_rewards/chosen"] - after["eval_rewards/rejected"], abs=1e-6
    )
    unchanged = [n for n, p in tiny_llama.named_parameters() if p.requires_grad and torch.equal(p, before_params[n])]
    assert not unchanged, f"parameters not updated by training: {unchanged}"
    assert len(before_params) == sum(1 for _ in tiny_llama.parameters())

    train_logs = [log for log in trainer.state.log_history if "loss" in log]
    assert train_logs and all(
        {"accuracy", "rewards/chosen", "rewards/rejected", "rewards/margin"} <= log.keys() for log in train_logs
    )
    assert train_logs[-1]["loss"] < train_logs[0]["loss"]


def test_loss_is_one_concatenated_forward_pass(tmp_path, tokenizer, tiny_llama, sample):
    rows = sample[1][:8]
    trainer = RewardTrainer(
        model=tiny_llama, args=make_args(tmp_path, center_rewards_coefficient=0.05),
        tokenizer=tokenizer, train_dataset=rows, eval_dataset=rows,
    )
    (batch,) = batches(trainer, trainer.eval_dataset)
    calls = []
    hook = tiny_llama.register_forward_hook(lambda m, args, kwargs, out: calls.append(kwargs["input_ids"].shape),
                                            with_kwargs=True)
    try:
        with torch.no_grad():
            loss = trainer.compute_loss(tiny_llama, batch)
    finally:
        hook.remove()
    assert calls == [torch.Size([16, batch["input_ids_chosen"].shape[1]])]

    # the same rewards, one side at a time, give the same loss (centering + margin on)
    with torch.no_grad():
        chosen = tiny_llama(input_ids=batch["input_ids_chosen"], attention_mask=batch["attention_mask_chosen"]).logits[:, 0]
        rejected = tiny_llama(input_ids=batch["input_ids_rejected"], attention_mask=batch["attention_mask_rejected"]).logits[:, 0]
    expected = pairwise_loss(chosen, rejected, batch["margin"], 0.05)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_use_margin_false_ignores_the_margin(tmp_path, tokenizer, tiny_llama, sample):
    rows = sample[1][:8]
    assert all(r["margin"] != 0 for r in rows)
    losses = {}
    for use_margin in (True, False):
        trainer = RewardTrainer(model=tiny_llama, args=make_args(tmp_path, use_margin=use_margin),
                                tokenizer=tokenizer, train_dataset=rows, eval_dataset=rows)
        (batch,) = batches(trainer, trainer.eval_dataset)
        with torch.no_grad():
            losses[use_margin], out = trainer.compute_loss(tiny_llama, batch, return_outputs=True)
    chosen, rejected = out["rewards_chosen"], out["rewards_rejected"]
    torch.testing.assert_close(losses[False], pairwise_loss(chosen, rejected))
    torch.testing.assert_close(losses[True], pairwise_loss(chosen, rejected, batch["margin"]))
    assert not torch.isclose(losses[True], losses[False])


# -- inputs -------------------------------------------------------------------------


def test_pretokenized_and_text_give_identical_batches(tmp_path, tokenizer, tiny_llama, sample):
    text_rows = sample[1][:12]
    encoded = PairEncoder(tokenizer, "explicit_prompt").encode_rows(text_rows)
    pad = tokenizer.pad_token_id
    # pre-tokenized rows may carry their own padding; it must not survive
    pretokenized = [
        {**p, "input_ids_chosen": p["input_ids_chosen"] + [pad, pad],
         "attention_mask_chosen": p["attention_mask_chosen"] + [0, 0]}
        for p in encoded
    ]
    args = make_args(tmp_path)
    from_text = RewardTrainer(model=tiny_llama, args=args, tokenizer=tokenizer,
                              train_dataset=text_rows, eval_dataset=text_rows)
    from_ids = RewardTrainer(model=tiny_llama, args=args, tokenizer=tokenizer,
                             train_dataset=Dataset.from_list(pretokenized), eval_dataset=pretokenized)
    a, b = batches(from_text, from_text.eval_dataset), batches(from_ids, from_ids.eval_dataset)
    assert len(a) == len(b) == 1
    assert a[0].keys() == b[0].keys() >= {"input_ids_chosen", "attention_mask_chosen", "input_ids_rejected",
                                          "attention_mask_rejected", "margin"}
    for key in a[0]:
        if isinstance(a[0][key], torch.Tensor):
            assert torch.equal(a[0][key], b[0][key]), key


def to_conversation(row):
    return {
        "prompt": [{"role": "user", "content": row["prompt"].removeprefix("Human: ").removesuffix("\nAssistant:")}],
        "chosen": [{"role": "assistant", "content": row["chosen"].strip()}],
        "rejected": [{"role": "assistant", "content": row["rejected"].strip()}],
    }


def test_conversational_pairs_train(tmp_path, tokenizer, tiny_llama, sample):
    rows = [to_conversation(r) for r in sample[0][:32]]
    trainer = RewardTrainer(model=tiny_llama, args=make_args(tmp_path, max_steps=2),
                            tokenizer=tokenizer, train_dataset=Dataset.from_list(rows))
    first = trainer.train_dataset[0]
    rendered = tokenizer.apply_chat_template(rows[0]["prompt"] + rows[0]["chosen"], tokenize=False)
    assert first["input_ids_chosen"] == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    result = trainer.train()
    assert math.isfinite(result.training_loss)


def test_processing_class_is_a_synonym_of_tokenizer(tmp_path, tokenizer, tiny_llama, sample):
    rows = sample[1][:4]
    trainer = RewardTrainer(model=tiny_llama, args=make_args(tmp_path), processing_class=tokenizer, train_dataset=rows)
    assert trainer.processing_class is tokenizer
    with pytest.raises(ValueError, match="tokenizer= or processing_class="):
        RewardTrainer(model=tiny_llama, args=make_args(tmp_path), tokenizer=tokenizer,
                      processing_class=builtin_tokenizer(), train_dataset=rows)
    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        RewardTrainer(model=tiny_llama, args=make_args(tmp_path), train_dataset=rows)


def test_args_must_be_a_reward_config(tmp_path, tokenizer, tiny_llama, sample):
    from transformers import TrainingArguments

    with pytest.raises(TypeError, match="rayreward.RewardConfig"):
        RewardTrainer(model=tiny_llama, args=TrainingArguments(output_dir=str(tmp_path)), tokenizer=tokenizer,
                      train_dataset=sample[1][:4])


def test_max_length_argument_filters_and_counts(tmp_path, tokenizer, tiny_llama, sample):
    rows = sample[1][:40]
    encoded = PairEncoder(tokenizer, "explicit_prompt").encode_rows(rows)
    limit = sorted(len(p["input_ids_chosen"]) for p in encoded)[20]
    too_long = sum(max(len(p["input_ids_chosen"]), len(p["input_ids_rejected"])) > limit for p in encoded)
    assert 0 < too_long < len(rows)
    trainer = RewardTrainer(model=tiny_llama, args=make_args(tmp_path, max_length=1024), tokenizer=tokenizer,
                            train_dataset=rows, eval_dataset=rows, max_length=limit)
    assert trainer.max_length == limit
    for name in ("train_dataset", "eval_dataset"):
        stats = trainer.length_stats[name]
        assert (stats.pairs, stats.filtered, stats.truncated) == (40, too_long, 0)
    assert len(trainer.train_dataset) == 40 - too_long
    assert all(len(p["input_ids_chosen"]) <= limit and len(p["input_ids_rejected"]) <= limit
               for p in trainer.train_dataset.pairs)


def test_truncate_policy_keeps_every_pair(tmp_path, tokenizer, tiny_llama, sample):
    rows = sample[1][:40]
    trainer = RewardTrainer(model=tiny_llama, args=make_args(tmp_path, max_length=24, length_policy="truncate"),
                            tokenizer=tokenizer, train_dataset=rows)
    stats = trainer.length_stats["train_dataset"]
    assert stats.truncated > 0 and stats.filtered == 0
    assert len(trainer.train_dataset) == 40
    for p in trainer.train_dataset.pairs:
        for side in ("chosen", "rejected"):
            ids = p[f"input_ids_{side}"]
            assert len(ids) <= 24 and ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id


def test_bad_datasets_are_reported_before_training(tmp_path, tokenizer, tiny_llama, sample):
    rows = [dict(r) for r in sample[1][:4]]
    no_rejected = Dataset.from_list([{k: v for k, v in r.items() if k != "rejected"} for r in rows])
    with pytest.raises(DataFormatError, match=r"train_dataset: missing column\(s\) 'rejected'"):
        RewardTrainer(model=tiny_llama, args=make_args(tmp_path), tokenizer=tokenizer, train_dataset=no_rejected)
    rows[2]["margin"] = "high"
    with pytest.raises(ValueError, match=r"eval_dataset, row 2, field 'margin': margin must be a finite number"):
        RewardTrainer(model=tiny_llama, args=make_args(tmp_path), tokenizer=tokenizer,
                      train_dataset=sample[1][:4], eval_dataset=rows)
    with pytest.raises(ValueError, match=r"length_policy: got 'cut'; expected one of filter, truncate"):
        make_args(tmp_path, length_policy="cut")
    with pytest.raises(ValueError, match=r"max_length: got 0; expected a positive integer"):
        make_args(tmp_path, max_length=0)


# -- model set-up -------------------------------------------------------------------


def test_missing_pad_token_becomes_eos_on_tokenizer_and_model(tmp_path, sample):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER_DIR / "tokenizer.json"),
                                  bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    assert tok.pad_token_id is None
    model = tiny.build_model("tiny-llama", tok, hidden_size=32, num_layers=1)
    assert model.config.pad_token_id is None
    with pytest.warns(UserWarning, match=r"pad token is the EOS token .* chosen sequences end with it"):
        trainer = RewardTrainer(model=model, args=make_args(tmp_path, max_steps=1), tokenizer=tok,
                                train_dataset=sample[1][:16])
    assert tok.pad_token == "</s>" and tok.pad_token_id == tok.eos_token_id
    assert trainer.model.config.pad_token_id == tok.eos_token_id
    assert math.isfinite(trainer.train().training_loss)


def test_distinct_pad_token_gives_no_warning(tmp_path, tokenizer, tiny_llama, sample, recwarn):
    RewardTrainer(model=tiny_llama, args=make_args(tmp_path), tokenizer=tokenizer, train_dataset=sample[1][:4])
    assert not [w for w in recwarn if "pad token is the EOS" in str(w.message)]


def test_model_by_name_and_dropout_disabled(tmp_path, tokenizer, sample):
    trainer = RewardTrainer(model="builtin:tiny-gpt2", args=make_args(tmp_path), tokenizer=tokenizer,
                            train_dataset=sample[1][:4])
    dropouts = [m for m in trainer.model.modules() if isinstance(m, nn.Dropout)]
    assert dropouts and all(m.p == 0.0 for m in dropouts)
    assert trainer.model.config.num_labels == 1

    kept = tiny.build_model("tiny-gpt2", tokenizer, hidden_size=32, num_layers=1)
    RewardTrainer(model=kept, args=make_args(tmp_path, disable_dropout=False), tokenizer=tokenizer,
                  train_dataset=sample[1][:4])
    assert any(m.p > 0 for m in kept.modules() if isinstance(m, nn.Dropout))


def test_gradient_checkpointing_default_and_override(tmp_path, tokenizer, sample):
    assert RewardConfig(output_dir=str(tmp_path)).activation_checkpointing is True
    assert RewardConfig(output_dir=str(tmp_path)).gradient_checkpointing is True
    off = RewardConfig(output_dir=str(tmp_path), gradient_checkpointing=False)
    assert off.activation_checkpointing is False and off.gradient_checkpointing is False
    assert RewardConfig(output_dir=str(tmp_path), activation_checkpointing=False).gradient_checkpointing is False
    # copies that change the new name keep the change
    assert dataclasses.replace(RewardConfig(output_dir=str(tmp_path)), activation_checkpointing=False)\
        .activation_checkpointing is False
    assert RewardConfig(**{**RewardConfig(output_dir=str(tmp_path)).to_dict(), "activation_checkpointing": False})\
        .activation_checkpointing is False

    for flag in (True, False):
        model = tiny.build_model("tiny-llama", tokenizer, hidden_size=32, num_layers=1)
        trainer = RewardTrainer(model=model, args=make_args(tmp_path, max_steps=1, gradient_checkpointing=flag),
                                tokenizer=tokenizer, train_dataset=sample[1][:8])
        trainer.train()
        assert model.is_activation_checkpointing is flag


def test_user_compute_metrics_and_eval_dict(tmp_path, tokenizer, tiny_llama, sample):
    def count(prediction):
        return {"pairs": float(len(prediction.predictions))}

    trainer = RewardTrainer(model=tiny_llama, args=make_args(tmp_path), tokenizer=tokenizer,
                            train_dataset=sample[1][:4], compute_metrics=count,
                            eval_dataset={"a": sample[1][:5], "b": Dataset.from_list(sample[1][5:12])})
    metrics = trainer.evaluate()
    assert metrics["eval_a_pairs"] == 5 and metrics["eval_b_pairs"] == 7
    assert 0 <= metrics["eval_a_accuracy"] <= 1 and "eval_b_rewards/margin" in metrics


def test_visualize_samples(tmp_path, tokenizer, tiny_llama, sample, capsys):
    rows = sample[1][:6]
    trainer = RewardTrainer(model=tiny_llama, args=make_args(tmp_path, per_device_eval_batch_size=4),
                            tokenizer=tokenizer, train_dataset=rows, eval_dataset=rows)
    table = trainer.visualize_samples(5)
    printed = capsys.readouterr().out
    assert list(table.columns) == ["chosen_text", "rejected_text", "reward_chosen", "reward_rejected", "p_chosen"]
    assert len(table) == 5  # across two eval batches of 4
    for row, source in zip(table.itertuples(), rows):
        assert row.chosen_text == source["prompt"] + source["chosen"]
        assert row.p_chosen == pytest.approx(1 / (1 + math.exp(row.reward_rejected - row.reward_chosen)))
    assert "P(chosen)" in printed and "r_chosen" in printed
    assert f"{table.reward_chosen[0]:.3f}" in printed
    assert rows[0]["rejected"].split()[-1] in printed
    assert tiny_llama.training  # put back the way it was found
    assert len(trainer.visualize_samples(-1)) == 6


def test_attention_dropout_floats_are_zeroed(tmp_path, tokenizer, sample):
    model = tiny.build_model("tiny-llama", tokenizer, hidden_size=32, num_layers=1)
    model.config.attention_dropout = 0.5
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5
    trainer = RewardTrainer(model=model, args=make_args(tmp_path), tokenizer=tokenizer, eval_dataset=sample[1][:4])
    assert model.config.attention_dropout == 0.0
    assert all(layer.self_attn.attention_dropout == 0.0 for layer in model.model.layers)
    (batch,) = batches(trainer, trainer.eval_dataset)
    model.train()  # dropout would act now; with it off, two passes agree
    with torch.no_grad():
        first, second = (trainer.compute_rewards(model, batch)[0] for _ in range(2))
    torch.testing.assert_close(first, second)


def test_model_init_models_get_the_same_setup(tmp_path, tokenizer, sample):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER_DIR / "tokenizer.json"),
                                  bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    trainer = RewardTrainer(model_init=lambda: tiny.build_model("tiny-gpt2", tok, hidden_size=32, num_layers=1),
                            args=make_args(tmp_path, max_steps=1), tokenizer=tok, train_dataset=sample[1][:8])
    model = trainer.model
    assert model.config.pad_token_id == tok.eos_token_id
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, nn.Dropout))
    assert math.isfinite(trainer.train().training_loss)
