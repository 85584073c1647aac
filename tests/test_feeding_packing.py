"""Worker-side feeding with the speed features: packed and length-grouped batches."""

from __future__ import annotations

import pytest
import torch

from rayreward.data import iter_pair_batches
from rayreward.core.packed import PackingMode
from rayreward.data.packing import is_packed


def _pairs(n: int) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        prefix = torch.randint(5, 100, (int(torch.randint(1, 30, (1,), generator=gen)),), generator=gen).tolist()
        rows.append({
            "input_ids_chosen": prefix + [100 + i, 2],
            "input_ids_rejected": prefix + [200 + i, 201, 2],
            "margin": float(i % 3),
        })
    return rows


def _seen(batches, packed: bool) -> list[int]:
    """The chosen-side marker token (100 + row index) of every pair in the batches."""
    seen = []
    for b in batches:
        assert is_packed(b) == packed
        ids = b["packed_input_ids"] if packed else b["input_ids_chosen"]
        seen += [t - 100 for t in ids.flatten().tolist() if 100 <= t < 200]
    return seen


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("plan", [
    PackingMode(group_by_length=True),
    PackingMode(padding_free=True, share_prefix=True),
    PackingMode(group_by_length=True, padding_free=True, share_prefix=True),
])
def test_every_pair_fed_once_per_epoch(ray_local, plan):
    ds = ray_local.data.from_items(_pairs(53))
    batches = list(iter_pair_batches(ds, 0, batch_size=4, packing=plan, length_group_batches=5, seed=1))
    assert len(batches) == 14  # ceil(53 / 4): grouping keeps the number of batches
    assert sorted(_seen(batches, plan.packs)) == list(range(53))
    if plan.group_by_length and not plan.packs:
        # Within a buffer, batches hold pairs of neighbouring lengths.
        spreads = [int(b["attention_mask_chosen"].sum(1).max() - b["attention_mask_chosen"].sum(1).min())
                   for b in batches]
        assert sum(spreads) / len(spreads) < 5


def test_the_trainer_follows_the_packing_plan_of_its_stream(tokenizer, tmp_path):
    # rayreward train resolves the plan once, on the worker, and builds the stream with it;
    # the trainer takes that plan instead of resolving its own (a tiny Llama would get both
    # packings on; this stream was built with length grouping only).
    from rayreward.core import tiny
    from rayreward.core.config import RewardConfig
    from rayreward.core.packed import plan_packing
    from rayreward.core.trainer import RewardTrainer
    from rayreward.data.feeding import BatchStream

    model = tiny.build_model("tiny-llama", tokenizer, hidden_size=32, num_layers=1)
    args = RewardConfig(output_dir=str(tmp_path), max_steps=1, report_to=[])
    own = plan_packing(model, args)
    assert own.padding_free and own.share_prefix
    grouped = PackingMode(group_by_length=True)
    stream = BatchStream(None, tokenizer, 4, epochs=1, packing=grouped)  # built, not read
    assert RewardTrainer(model=model, args=args, tokenizer=tokenizer, train_dataset=stream).packing is grouped
    # Anything else (pairs in memory, a datasets.Dataset) gets the plan resolved for the model.
    assert RewardTrainer(model=model, args=args, tokenizer=tokenizer, train_dataset=[{"prompt": "Hi", "chosen": " Hello!", "rejected": " Go away."}]).packing == own
