"""Length grouping and packing: layouts by hand, and exactness against the plain path.

Exactness is checked against the reference a reward model is defined by: each
sequence through the model alone, unpadded. Rewards and the gradients of the pairwise
loss must match to fp32 tolerance, for random pairs and real hh-rlhf pairs, with and
without a shared prefix, for every decoder family that packs by default.
"""

from __future__ import annotations

import random

import pytest
import torch
from transformers.trainer_pt_utils import LengthGroupedSampler

from rayreward import RewardConfig

from rayreward import RewardTrainer

from rayreward import pairwise_loss

from rayreward.core import tiny

from rayreward.data.tokenizer import builtin_tokenizer
from rayreward.data.collators import RewardDataCollatorWithPadding
from rayreward.core.model import disable_dropout
from rayreward.data.packing import (
    PackedPairCollator,
    length_grouped_batches,
    pack_pairs,
    packed_attention_mask,
    pair_length,
)
from rayreward.core.packed import packed_rewards, plan_packing
from rayreward.core.trainer import tokenize_pairs

TOL = dict(rtol=1e-4, atol=1e-5)
LAYOUTS = [  # (share_prefix, padding_free)
    (True, True),
    (True, False),
    (False, True),
]


def decoder(arch: str, tokenizer, seed: int = 0, attn: str = "sdpa"):
    """A tiny causal decoder of one family, hidden 32, in eval mode."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if arch in ("llama", "gpt2"):
        model = tiny.build_model(f"tiny-{arch}", tokenizer, hidden_size=32, num_layers=2, seed=seed)
    else:
        config = AutoConfig.for_model(
            arch, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, vocab_size=len(tokenizer), max_position_embeddings=2048,
            num_labels=1, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
        )
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(config)
    model.config._attn_implementation = attn
    disable_dropout(model)
    return model.eval()


def random_pairs(n: int, seed: int = 0, vocab: int = 200) -> list[dict]:
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        prefix = [rng.randrange(10, vocab) for _ in range(rng.randrange(0, 14))]
        # one pair has no shared prefix and one is a prefix of the other side
        chosen = prefix + [rng.randrange(10, vocab) for _ in range(rng.randrange(1, 9))]
        rejected = prefix + [rng.randrange(10, vocab) for _ in range(rng.randrange(1, 9))]
        if i == 1:
            rejected = chosen + [rng.randrange(10, vocab)]
        pair = {"input_ids_chosen": chosen, "attention_mask_chosen": [1] * len(chosen),
                "input_ids_rejected": rejected, "attention_mask_rejected": [1] * len(rejected)}
        pairs.append(pair)
    return pairs


@pytest.fixture(scope="module")
def hh_pairs(hh_dir):
    from conftest import read_jsonl

    tok = builtin_tokenizer()
    rows = read_jsonl(hh_dir / "train.jsonl", limit=6)
    dataset, _ = tokenize_pairs(rows, tok, max_length=None)
    return dataset.pairs


def separate_rewards(model, pairs):
    """The reference: every sequence through the model alone, unpadded."""
    out = []
    for p in pairs:
        for side in ("chosen", "rejected"):
            ids = torch.tensor([p[f"input_ids_{side}"]])
            out.append(model(input_ids=ids).logits[0, 0])
    rewards = torch.stack(out).view(-1, 2)
    return rewards[:, 0], rewards[:, 1]


def rewards_and_grads(model, fn):
    model.zero_grad()
    chosen, rejected = fn()
    pairwise_loss(chosen, rejected, center_rewards_coefficient=0.1).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return torch.stack([chosen, rejected], 1).detach(), grads


def assert_same(got, expected):
    (r_got, g_got), (r_exp, g_exp) = got, expected
    torch.testing.assert_close(r_got, r_exp, **TOL)
    assert g_got.keys() == g_exp.keys() and g_exp
    for name in g_exp:
        torch.testing.assert_close(g_got[name], g_exp[name], **TOL, msg=lambda m: f"gradient of {name}: {m}")


# -- length grouping -------------------------------------------------------------------


def test_length_grouped_batches_sort_a_buffer_and_keep_every_item():
    lengths = [(i * 37) % 101 for i in range(23)]
    items = list(range(23))
    batches = length_grouped_batches(items, 4, lengths, rng=0)
    assert sorted(i for b in batches for i in b) == items
    assert [len(b) for b in batches] == [4] * 5 + [3]  # the short batch comes last
    ranked = sorted(items, key=lambda i: lengths[i])
    for b in batches:  # each batch is a run of neighbours in length order
        positions = sorted(ranked.index(i) for i in b)
        assert positions == list(range(positions[0], positions[0] + len(b)))
    assert batches == length_grouped_batches(items, 4, lengths, rng=0)
    orders = {tuple(map(tuple, length_grouped_batches(items, 4, lengths, rng=s))) for s in range(5)}
    assert len(orders) > 1  # the batch order is random


def test_length_grouped_batches_measure_pairs_by_their_longer_side():
    pairs = [{"input_ids_chosen": [1] * n, "input_ids_rejected": [2] * (10 - n)} for n in (1, 5, 9, 2)]
    assert [pair_length(p) for p in pairs] == [9, 5, 9, 8]
    (a, b) = length_grouped_batches(pairs, 2, rng=3)
    assert {pair_length(p) for p in a} | {pair_length(p) for p in b} == {5, 8, 9}
    assert sorted(map(pair_length, a)) in ([5, 8], [9, 9])


def test_pack_pairs_layout_by_hand():
    pairs = [
        {"input_ids_chosen": [5, 6, 7, 8], "input_ids_rejected": [5, 6, 9], "margin": 0.5},
        {"input_ids_chosen": [3, 4], "input_ids_rejected": [2], "margin": 1.0},
    ]
    batch = pack_pairs(pairs, pad_token_id=0)
    # pair 0 = prefix [5, 6] + [7, 8] + [9] (5 tokens); pair 1 = no prefix, [3, 4] + [2]
    assert batch["packed_input_ids"].tolist() == [[5, 6, 7, 8, 9], [3, 4, 2, 0, 0]]
    assert batch["packed_position_ids"].tolist() == [[0, 1, 2, 3, 2], [0, 1, 0, 0, 0]]
    assert batch["packed_branch_ids"].tolist() == [[0, 0, 1, 1, 2], [1, 1, 2, 0, 0]]
    assert batch["packed_sequence_ids"].tolist() == [[0, 0, 0, 0, 0], [1, 1, 1, -1, -1]]
    assert batch["chosen_index"].tolist() == [[0, 3], [1, 1]]
    assert batch["rejected_index"].tolist() == [[0, 4], [1, 2]]
    assert batch["margin"].tolist() == [0.5, 1.0]
    assert next(iter(batch.values())).shape[0] == 2  # transformers' batch-size probe counts pairs

    # a row holds several pairs when they fit within the longest one
    more = pairs + [{"input_ids_chosen": [1], "input_ids_rejected": [4], "margin": 0.0}]
    packed = pack_pairs(more, pad_token_id=0)
    assert packed["packed_input_ids"].tolist() == [[5, 6, 7, 8, 9], [3, 4, 2, 1, 4]]
    assert packed["packed_sequence_ids"][1].tolist() == [1, 1, 1, 2, 2]
    assert packed["rejected_index"].tolist() == [[0, 4], [1, 2], [1, 4]]

    # without padding-free packing each pair has its own row
    own = pack_pairs(more, pad_token_id=0, padding_free=False, pad_to_multiple_of=4)
    assert own["packed_input_ids"].tolist() == [[5, 6, 7, 8, 9, 0, 0, 0], [3, 4, 2, 0, 0, 0, 0, 0],
                                                [1, 4, 0, 0, 0, 0, 0, 0]]


def test_pack_pairs_drops_masked_and_trailing_pad_tokens_and_keeps_a_token_per_side():
    pairs = [{"input_ids_chosen": [5, 6, 0, 0], "attention_mask_chosen": [1, 1, 1, 0],
              "input_ids_rejected": [5, 6], "attention_mask_rejected": [1, 1]}]
    batch = PackedPairCollator(pad_token_id=0)(pairs)
    # chosen == rejected once the pad is dropped: the prefix stops one token short
    assert batch["packed_input_ids"].tolist() == [[5, 6, 6]]
    assert batch["packed_position_ids"].tolist() == [[0, 1, 1]]


def test_attention_mask_never_crosses_pairs_or_branches():
    batch = pack_pairs(
        [{"input_ids_chosen": [5, 6, 7], "input_ids_rejected": [5, 6, 8, 9]},
         {"input_ids_chosen": [1], "input_ids_rejected": [2]}],
        pad_token_id=0,
    )
    mask = packed_attention_mask(batch["packed_sequence_ids"], batch["packed_branch_ids"])[:, 0]
    assert batch["packed_input_ids"].tolist() == [[5, 6, 7, 8, 9], [1, 2, 0, 0, 0]]
    allowed = [[1, 0, 0, 0, 0],  # prefix 5
               [1, 1, 0, 0, 0],  # prefix 6
               [1, 1, 1, 0, 0],  # chosen 7
               [1, 1, 0, 1, 0],  # rejected 8: prefix and itself, not the chosen 7
               [1, 1, 0, 1, 1]]  # rejected 9
    assert mask[0].int().tolist() == allowed
    assert mask[1].int().tolist() == [[1, 0, 0, 0, 0],
                                      [0, 1, 0, 0, 0],  # the other pair's chosen is invisible
                                      [0, 0, 1, 0, 0],  # padding sees padding only
                                      [0, 0, 1, 1, 0],
                                      [0, 0, 1, 1, 1]]


# -- exactness -------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2", "mistral", "qwen2", "qwen3"])
@pytest.mark.parametrize("share_prefix,padding_free", LAYOUTS)
def test_packed_rewards_and_gradients_equal_separate_passes_random_pairs(arch, share_prefix, padding_free, tokenizer):
    model = decoder(arch, tokenizer)
    pairs = random_pairs(7)
    batch = pack_pairs(pairs, tokenizer.pad_token_id, share_prefix=share_prefix, padding_free=padding_free)
    expected = rewards_and_grads(model, lambda: separate_rewards(model, pairs))
    assert_same(rewards_and_grads(model, lambda: packed_rewards(model, batch)), expected)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_equals_plain_trainer_path_on_real_pairs(arch, attn, tokenizer, hh_pairs, tmp_path):
    model = decoder(arch, tokenizer, attn=attn)
    args = RewardConfig(output_dir=str(tmp_path), report_to=[], padding_free=False, share_prefix=False)
    trainer = RewardTrainer(model=model, args=args, tokenizer=tokenizer)
    padded = RewardDataCollatorWithPadding(tokenizer)(hh_pairs)
    plain = rewards_and_grads(model, lambda: trainer.compute_rewards(model, padded))
    assert_same(plain, rewards_and_grads(model, lambda: separate_rewards(model, hh_pairs)))
    for share_prefix, padding_free in LAYOUTS:
        batch = pack_pairs(hh_pairs, tokenizer.pad_token_id, share_prefix=share_prefix, padding_free=padding_free)
        assert_same(rewards_and_grads(model, lambda: trainer.compute_rewards(model, batch)), plain)


def test_shared_prefix_saves_real_tokens(tokenizer, hh_pairs):
    real = sum(len(p["input_ids_chosen"]) + len(p["input_ids_rejected"]) for p in hh_pairs)
    batch = pack_pairs(hh_pairs, tokenizer.pad_token_id)
    computed = int((batch["packed_sequence_ids"] >= 0).sum())
    assert computed < 0.8 * real  # hh-rlhf answers share the dialogue before them


def test_packed_rewards_through_lora(tokenizer):
    from peft import LoraConfig

    from rayreward.core.model import wrap_peft

    model = wrap_peft(decoder("llama", tokenizer), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    pairs = random_pairs(4, seed=3)
    batch = pack_pairs(pairs, tokenizer.pad_token_id)
    expected = rewards_and_grads(model, lambda: separate_rewards(model, pairs))
    got = rewards_and_grads(model, lambda: packed_rewards(model, batch))
    assert any("lora" in n for n in got[1])
    assert_same(got, expected)


# -- which features a model gets -------------------------------------------------------


def test_plan_turns_packing_on_for_decoders_and_off_for_encoders(tokenizer):
    args = RewardConfig(output_dir="unused", report_to=[])
    plan = plan_packing(decoder("llama", tokenizer), args)
    # packed rows hold no padding to save: grouping stays off and batches stay as sampled
    assert plan.padding_free and plan.share_prefix and not plan.group_by_length
    bert = tiny.build_model("tiny-bert", tokenizer, hidden_size=32, num_layers=1)
    plan = plan_packing(bert, args)
    assert plan.group_by_length and not plan.packs
    with pytest.raises(ValueError, match="share_prefix=True: BertForSequenceClassification has no per-token"):
        plan_packing(bert, RewardConfig(output_dir="unused", report_to=[], share_prefix=True))
    off = RewardConfig(output_dir="unused", report_to=[], group_by_length=False, padding_free=False)
    plan = plan_packing(decoder("gpt2", tokenizer), off)
    assert (plan.group_by_length, plan.padding_free, plan.share_prefix) == (False, False, True)
    plan = plan_packing(decoder("gpt2", tokenizer), RewardConfig(output_dir="unused", report_to=[], padding_free=False))
    assert plan.group_by_length and plan.share_prefix  # one padded row per pair: grouping pays


def test_plan_refuses_attention_without_custom_masks_and_short_sliding_windows(tokenizer):
    model = decoder("llama", tokenizer)
    model.config._attn_implementation = "flash_attention_2"
    args = RewardConfig(output_dir="unused", report_to=[])
    assert not plan_packing(model, args).packs
    with pytest.raises(ValueError, match="attn_implementation='flash_attention_2'.*'sdpa'"):
        plan_packing(model, RewardConfig(output_dir="unused", report_to=[], padding_free=True))
    mistral = decoder("mistral", tokenizer)
    mistral.config.sliding_window = 64
    assert not plan_packing(mistral, args).packs  # max_length 1024 > window
    assert plan_packing(mistral, RewardConfig(output_dir="unused", report_to=[], max_length=64)).packs


# -- in the trainer --------------------------------------------------------------------


def trainer_for(model, tokenizer, pairs, tmp_path, **overrides):
    settings = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, learning_rate=1e-2,
                    max_steps=2, save_strategy="no", report_to=[], disable_tqdm=True, seed=0,
                    dataloader_pin_memory=False)
    settings.update(overrides)
    return RewardTrainer(model=model, args=RewardConfig(**settings), tokenizer=tokenizer,
                         train_dataset=pairs, eval_dataset=pairs)


def test_trainer_packs_training_batches_and_pads_evaluation_batches(tokenizer, hh_pairs, tmp_path):
    trainer = trainer_for(decoder("llama", tokenizer), tokenizer, hh_pairs, tmp_path)
    assert not isinstance(trainer.get_train_sampler(), LengthGroupedSampler)
    train_batch = next(iter(trainer.get_train_dataloader()))
    assert "packed_input_ids" in train_batch and train_batch["chosen_index"].shape == (4, 2)
    eval_batch = next(iter(trainer.get_eval_dataloader()))
    assert "input_ids_chosen" in eval_batch and "packed_input_ids" not in eval_batch

    encoder = tiny.build_model("tiny-bert", tokenizer, hidden_size=32, num_layers=1)
    trainer = trainer_for(encoder, tokenizer, hh_pairs, tmp_path)
    assert isinstance(trainer.get_train_sampler(), LengthGroupedSampler)
    assert "input_ids_chosen" in next(iter(trainer.get_train_dataloader()))


def test_training_steps_with_packing_equal_the_plain_path(tokenizer, hh_pairs, tmp_path):
    """Same batches (no grouping), two SGD steps: the same weights either way.

    (SGD, not Adam: Adam's first step moves every weight by about the learning rate
    whatever the size of its gradient, which turns float rounding of tiny gradients into
    visible differences.)
    """
    weights = []
    for packing in (False, True):
        model = decoder("llama", tokenizer)
        trainer = trainer_for(model, tokenizer, hh_pairs, tmp_path / str(packing), group_by_length=False,
                              padding_free=packing, share_prefix=packing, optim="sgd", learning_rate=0.5)
        assert trainer.packing.packs == packing
        trainer.train()
        weights.append({n: p.detach().clone() for n, p in model.named_parameters()})
    before = decoder("llama", tokenizer).state_dict()
    assert any(not torch.equal(weights[0][n], before[n]) for n in weights[0])
    for name in weights[0]:
        torch.testing.assert_close(weights[1][name], weights[0][name], rtol=1e-4, atol=1e-5)
