"""RewardTrainer on ranked groups and ratings (datasets.Dataset), group packing exactness,
and the multi-attribute export read back with plain transformers."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset

from conftest import SAMPLE_DATA, read_jsonl
from group_data import ranked_rows, ratings_rows
from rayreward import RewardConfig, RewardTrainer
from rayreward.core import tiny
from rayreward.core.attributes import attribute_spec
from rayreward.core.loss import pairwise_loss
from rayreward.data.group_collators import GroupCollator
from rayreward.data.group_packing import pack_groups
from rayreward.core.packed import packed_group_rewards

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ATTRS = ["helpfulness", "politeness"]


def make_args(tmp_path, **overrides) -> RewardConfig:
    settings = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, per_device_eval_batch_size=16,
                    learning_rate=2e-3, num_train_epochs=3, logging_steps=10, save_strategy="no", report_to=[],
                    disable_tqdm=True, dataloader_pin_memory=False, seed=0, eval_strategy="no")
    settings.update(overrides)
    return RewardConfig(**settings)


@pytest.fixture(scope="module")
def ranked():
    return (ranked_rows(read_jsonl(SAMPLE_DATA / "train.jsonl"), seed=0),
            ranked_rows(read_jsonl(SAMPLE_DATA / "eval.jsonl"), seed=1))


@pytest.fixture(scope="module")
def ratings():
    import random

    train = ratings_rows(read_jsonl(SAMPLE_DATA / "train.jsonl"), seed=0)
    evaluation = ratings_rows(read_jsonl(SAMPLE_DATA / "eval.jsonl"), seed=1, missing=0.0)
    return random.Random(0).sample(train, 480), random.Random(1).sample(evaluation, 160)


@pytest.mark.parametrize("loss_type", ["plackett_luce", "bradley_terry"])
def test_ranked_groups_train_and_rank_the_eval_groups(tmp_path, tokenizer, tiny_llama, ranked, loss_type):
    train, evaluation = ranked
    trainer = RewardTrainer(model=tiny_llama, args=make_args(tmp_path, loss_type=loss_type), tokenizer=tokenizer,
                            train_dataset=Dataset.from_list(train), eval_dataset=Dataset.from_list(evaluation))
    assert trainer.data_kind == "groups" and trainer.packing.packs  # the decoder packs each group's prompt once
    params = {n: p.detach().clone() for n, p in tiny_llama.named_parameters()}
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_loss"] < before["eval_loss"]
    assert after["eval_pairwise_accuracy"] > 0.75, after
    assert after["eval_best_of_k_accuracy"] > before["eval_best_of_k_accuracy"]
    assert after["eval_kendall_tau"] > 0.4, after
    assert all(not torch.equal(p, params[n]) for n, p in tiny_llama.named_parameters())

    # visualize_samples: each response of the first groups, with its reward and its rank
    # in the group by reward, beside the data's score.
    tiny_llama.train()
    table = trainer.visualize_samples(3)
    assert tiny_llama.training  # scored in eval mode, given back in the mode it was in
    assert list(dict.fromkeys(table["group"])) == [0, 1, 2]
    for g, shown in table.groupby("group"):
        row = evaluation[g]
        assert len(shown) == len(row["responses"])
        flat = [" ".join(t.split()) for t in shown["text"]]
        assert all(f.endswith(" ".join(r.split())) for f, r in zip(flat, row["responses"])), (flat, row)
        if row["scores"] is not None:
            assert shown["score"].tolist() == row["scores"]
        by_reward = shown.sort_values("reward", ascending=False)["reward_rank"].tolist()
        assert by_reward == list(range(1, len(shown) + 1))
    first = evaluation[0]
    ids = tokenizer(first["prompt"] + first["responses"][0] + tokenizer.eos_token, return_tensors="pt")
    tiny_llama.eval()
    with torch.no_grad():
        assert table["reward"].iloc[0] == pytest.approx(tiny_llama(**ids).logits[0, 0].item(), abs=1e-4)


def test_group_loss_in_the_trainer_is_the_pair_loss_for_k_2(tmp_path, tokenizer, tiny_llama):
    rows = read_jsonl(SAMPLE_DATA / "eval.jsonl")[:6]
    groups = [{"prompt": r["prompt"], "responses": [r["chosen"], r["rejected"]], "ranking": [0, 1]} for r in rows]
    for loss_type in ("bradley_terry", "plackett_luce"):
        pair_trainer = RewardTrainer(model=tiny_llama, args=make_args(tmp_path, use_margin=False), tokenizer=tokenizer,
                                     train_dataset=rows)
        group_trainer = RewardTrainer(model=tiny_llama, args=make_args(tmp_path, loss_type=loss_type),
                                      tokenizer=tokenizer, train_dataset=groups)
        pair_batch = next(iter(pair_trainer.get_eval_dataloader(rows)))
        group_batch = next(iter(group_trainer.get_eval_dataloader(groups)))
        with torch.no_grad():
            pair_loss = pair_trainer.compute_loss(tiny_llama, pair_batch)
            group_loss = group_trainer.compute_loss(tiny_llama, group_batch)
        torch.testing.assert_close(group_loss, pair_loss, rtol=1e-6, atol=1e-6)


def test_packed_group_rewards_equal_separate_rows(tokenizer, tiny_llama, ranked):
    from rayreward.core.group_data import tokenize_groups

    encoded, _ = tokenize_groups(ranked[1][:6], tokenizer, "ranked")
    features = [encoded[i] for i in range(len(encoded))]
    assert {len(f["scores"]) for f in features} >= {2, 3}
    packed = pack_groups(features, tokenizer.pad_token_id)
    padded = GroupCollator(tokenizer.pad_token_id)(features)
    # the prompt is computed once per group: fewer tokens than the K separate rows
    assert (packed["packed_sequence_ids"] >= 0).sum() < padded["attention_mask"].sum()
    tiny_llama.eval()
    with torch.no_grad():
        separate = torch.cat([tiny_llama(input_ids=padded["input_ids"][i:i + 1, :int(m.sum())]).logits[:, 0]
                              for i, m in enumerate(padded["attention_mask"])])
        for backend in ("dense", "banded"):
            got = packed_group_rewards(tiny_llama, packed, backend)[:, 0]
            torch.testing.assert_close(got, separate, rtol=0, atol=1e-5)
    assert torch.equal(packed["group_index"], padded["group_index"])
    # flex attention's block mask (from the sequence and branch ids) takes K branches as
    # they are; torch 2.13 runs its backward on CUDA only, so on CPU it is checked forward.
    with torch.no_grad():
        flex = packed_group_rewards(tiny_llama, packed, "flex")[:, 0]
    torch.testing.assert_close(flex, got, rtol=0, atol=1e-5)


def test_ratings_train_a_two_attribute_head_and_export_loads_with_transformers(tmp_path, tokenizer, ratings):
    from transformers import AutoModelForSequenceClassification

    train, evaluation = ratings
    model = tiny.build_model("tiny-llama", tokenizer, hidden_size=32, num_layers=2, seed=0, num_labels=2)
    args = make_args(tmp_path, loss_type="regression", attributes=ATTRS, attribute_weights=[0.7, 0.3],
                     standardize_targets=True, num_train_epochs=2, per_device_train_batch_size=16)
    trainer = RewardTrainer(model=model, args=args, tokenizer=tokenizer, train_dataset=Dataset.from_list(train),
                            eval_dataset=Dataset.from_list(evaluation))
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_loss"] < before["eval_loss"]
    for name in ATTRS:
        assert after[f"eval_{name}/rmse"] < before[f"eval_{name}/rmse"]
        assert after[f"eval_{name}/spearman"] > 0.6, after
    trainer.save_model(str(tmp_path / "export"))
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export")
    assert loaded.config.num_labels == 2 and loaded.config.id2label == {0: "helpfulness", 1: "politeness"}
    spec = attribute_spec(loaded.config)
    assert spec.names == tuple(ATTRS) and spec.weights == (0.7, 0.3)
    # standardised targets: mean and std of the rated training cells are recorded
    rated = [r["helpfulness"] for r in train if r["helpfulness"] is not None]
    assert spec.mean[0] == pytest.approx(sum(rated) / len(rated))
    ids = tokenizer(evaluation[0]["prompt"] + evaluation[0]["response"] + tokenizer.eos_token, return_tensors="pt")
    with torch.no_grad():
        out = loaded(**ids).logits
        model.eval()
        torch.testing.assert_close(out, model(**ids).logits, rtol=1e-5, atol=1e-5)
    values = spec.values(out)
    assert spec.combine(values).item() == pytest.approx(0.7 * values[0, 0].item() + 0.3 * values[0, 1].item(), rel=1e-5)

    # visualize_samples: each rated response, the data's ratings beside the predicted ones
    # (rating units) and the combined reward.
    table = trainer.visualize_samples(5)
    assert list(table.columns) == ["text", "helpfulness", "helpfulness_predicted", "politeness",
                                   "politeness_predicted", "reward"]
    assert len(table) == 5
    assert table["helpfulness"].tolist() == [r["helpfulness"] for r in evaluation[:5]]
    assert table["helpfulness_predicted"].iloc[0] == pytest.approx(values[0, 0].item(), abs=1e-4)
    combined = 0.7 * table["helpfulness_predicted"] + 0.3 * table["politeness_predicted"]
    assert table["reward"].tolist() == pytest.approx(combined.tolist(), abs=1e-5)


def test_shape_and_loss_type_must_agree(tmp_path, tokenizer, tiny_llama, ranked, ratings):
    with pytest.raises(ValueError, match="trains with loss_type='regression'"):
        RewardTrainer(model=tiny_llama, args=make_args(tmp_path, attributes=["helpfulness"]), tokenizer=tokenizer,
                      train_dataset=[dict(r, politeness=None) for r in ratings[0][:4] if r["helpfulness"] is not None])
    with pytest.raises(ValueError, match="needs ratings data"):
        RewardTrainer(model=tiny_llama, args=make_args(tmp_path, loss_type="regression"), tokenizer=tokenizer,
                      train_dataset=ranked[0][:4])
    with pytest.raises(ValueError, match="num_labels=1, but the config names 2 attributes"):
        RewardTrainer(model=tiny_llama, args=make_args(tmp_path, loss_type="regression", attributes=ATTRS),
                      tokenizer=tokenizer, train_dataset=ratings[0][:4])
    with pytest.raises(ValueError, match="attribute_weights: got \\[1.0\\]; expected 2"):
        make_args(tmp_path, loss_type="regression", attributes=ATTRS, attribute_weights=[1.0])


def test_bad_group_rows_name_the_row(tmp_path, tokenizer, tiny_llama, ranked):
    from rayreward import BadRowError

    rows = [dict(r) for r in ranked[0][:5]]
    rows[3] = {"prompt": rows[3]["prompt"], "responses": rows[3]["responses"],
               "ranking": [0] * len(rows[3]["responses"]), "scores": None}
    with pytest.raises(BadRowError, match=r"train_dataset, row 3, field 'ranking'"):
        RewardTrainer(model=tiny_llama, args=make_args(tmp_path), tokenizer=tokenizer,
                      train_dataset=Dataset.from_list([{k: v for k, v in r.items()} for r in rows]))


def test_streamed_groups_train_evaluate_and_name_bad_rows(tmp_path, tokenizer, tiny_llama, ranked, ratings):
    from rayreward import BadRowError
    from rayreward.core.loss import ranking_loss
    from rayreward.data.groups import group_scores

    train, evaluation = ranked
    stream = Dataset.from_list(train).to_iterable_dataset()
    # learning_rate 0: the logged loss of step 1 is the loss of the stream's first 8
    # groups under the initial weights, computed here from K separate rows per group.
    args = make_args(tmp_path, loss_type="plackett_luce", max_steps=2, logging_steps=1, learning_rate=0.0)
    trainer = RewardTrainer(model=tiny_llama, args=args, tokenizer=tokenizer, train_dataset=stream)
    assert trainer.data_kind == "groups"
    trainer.train()
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    rewards, scores, index = [], [], []
    with torch.no_grad():
        for g, row in enumerate(train[:8]):
            for text in row["responses"]:
                ids = tokenizer(row["prompt"] + text + tokenizer.eos_token, return_tensors="pt")
                rewards.append(tiny_llama(**ids).logits[0, 0])
            scores += group_scores(row, "ranked")
            index += [g] * len(row["responses"])
    expected = ranking_loss("plackett_luce", torch.stack(rewards), torch.tensor(scores), torch.tensor(index))
    assert logged[0] == pytest.approx(expected.item(), abs=1e-4)

    # Evaluating a stream gives the metrics of the same rows as a Dataset (whole batches
    # of 16: of a stream's last, short batch the Trainer cannot know the size, and weighs
    # its loss as a full one).
    as_set = trainer.evaluate(Dataset.from_list(evaluation[:112]))
    as_stream = trainer.evaluate(Dataset.from_list(evaluation[:112]).to_iterable_dataset())
    for key in ("eval_top1_accuracy", "eval_best_of_k_accuracy", "eval_pairwise_accuracy", "eval_kendall_tau",
                "eval_loss"):
        assert as_stream[key] == pytest.approx(as_set[key], abs=1e-5), key

    # A bad row of a stream is named when it is read.
    rows = [dict(r) for r in train[:12]]
    rows[9] = dict(rows[9], ranking=[0] * len(rows[9]["responses"]), scores=None)
    bad = RewardTrainer(model=tiny_llama, args=make_args(tmp_path, max_steps=2), tokenizer=tokenizer,
                        train_dataset=Dataset.from_list(rows).to_iterable_dataset())
    with pytest.raises(BadRowError, match=r"train_dataset, row 9, field 'ranking'"):
        bad.train()
    # Standardised ratings need their statistics before training: said up front.
    rated = Dataset.from_list(ratings[0][:16]).to_iterable_dataset()
    with pytest.raises(ValueError, match="a streaming datasets.IterableDataset cannot be read ahead"):
        RewardTrainer(model=tiny.build_model("tiny-llama", tokenizer, hidden_size=32, num_labels=2),
                      args=make_args(tmp_path, loss_type="regression", attributes=ATTRS, standardize_targets=True,
                                     max_steps=2), tokenizer=tokenizer, train_dataset=rated)
