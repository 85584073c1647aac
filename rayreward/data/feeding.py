"""Worker side: collated batches from a Ray dataset shard, and the step count.

Inside a Ray Train worker, ``ray.train.get_dataset_shard("train")`` gives this
worker's share of ``PreparedData.train``; ``iter_pair_batches`` turns it into the
padded tensors ``RewardTrainer`` takes (chosen and rejected padded to one common
length by ``RewardDataCollatorWithPadding``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from rayreward.data.collators import RewardDataCollatorWithPadding

PAIR_COLUMNS = ("input_ids_chosen", "input_ids_rejected")


@dataclass(frozen=True)
class _PadSpec:
    # What the collator needs of a tokenizer, so a worker need not load one.
    pad_token_id: int
    padding_side: str = "right"


def iter_pair_batches(
    shard,
    tokenizer_or_pad_id: Any,
    batch_size: int,
    *,
    shuffle: str = "local",
    shuffle_buffer_size: int = 1000,
    seed: int = 42,
    epoch: int = 0,
    padding_side: str | None = None,
    pad_to_multiple_of: int | None = None,
    drop_last: bool = False,
    prefetch_batches: int = 1,
    packing: Any = None,
    length_group_batches: int = 50,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yields collated batches of pairs from a dataset shard, for one epoch.

    Args:
        shard: ``ray.train.get_dataset_shard("train")`` (a ``DataIterator``) or a
            ``ray.data.Dataset``.
        tokenizer_or_pad_id: a tokenizer (its ``pad_token_id`` and ``padding_side``
            are used) or the pad token id.
        batch_size: pairs per batch on this worker.
        shuffle: ``local`` or ``global`` shuffle pairs through a buffer of
            ``shuffle_buffer_size`` seeded with ``seed + epoch`` (``global`` data was
            also shuffled as a whole by ``build_datasets``); ``none`` keeps the order.
        shuffle_buffer_size: pairs in the local shuffle buffer.
        seed: base seed of the buffer.
        epoch: the epoch number; changes the buffer's order from epoch to epoch.
        padding_side: overrides the tokenizer's side (``right`` by default).
        pad_to_multiple_of: round the padded length up to a multiple of this.
        drop_last: drop a last batch smaller than ``batch_size``.
        prefetch_batches: batches Ray fetches ahead.
        packing: a ``rayreward.data.packing.PackingPlan`` (``plan_packing(model, args)``):
            packed batches for a decoder that packs, and length-grouped batches
            (within a buffer of ``length_group_batches`` batches) when it groups.
        length_group_batches: batches per length-grouping buffer.

    Yields:
        ``{"input_ids_chosen", "attention_mask_chosen", "input_ids_rejected",
        "attention_mask_rejected", ["margin"], "return_loss"}`` as the collator makes them.

    Example:
        >>> shard = ray.train.get_dataset_shard("train")
        >>> for batch in iter_pair_batches(shard, tokenizer, batch_size=8, epoch=epoch):
        ...     loss = trainer.compute_loss(model, batch)
    """
    if shuffle not in ("local", "global", "none"):
        raise ValueError(f"shuffle must be 'local', 'global' or 'none', got {shuffle!r}")
    if isinstance(tokenizer_or_pad_id, int):
        pad = _PadSpec(tokenizer_or_pad_id, padding_side or "right")
    else:
        tok = tokenizer_or_pad_id
        pad = _PadSpec(tok.pad_token_id, padding_side or getattr(tok, "padding_side", "right"))
    collate = packing.collator(pad.pad_token_id, pad_to_multiple_of) if packing is not None else None
    collate = collate or RewardDataCollatorWithPadding(pad, pad_to_multiple_of=pad_to_multiple_of)
    group = packing is not None and packing.group_by_length
    options: dict[str, Any] = {}
    if shuffle != "none" and shuffle_buffer_size > 1:
        options = {"local_shuffle_buffer_size": shuffle_buffer_size, "local_shuffle_seed": seed + epoch}
    # Grouping fetches a buffer of batches at once and regroups it by length; the
    # number of batches per epoch stays the same, so the step plan holds.
    fetch = batch_size * max(1, length_group_batches) if group else batch_size
    for k, batch in enumerate(shard.iter_batches(
        batch_size=fetch, batch_format="numpy", drop_last=drop_last and not group,
        prefetch_batches=prefetch_batches, **options
    )):
        columns = [c for c in (*PAIR_COLUMNS, "margin") if c in batch]
        pairs = [{c: batch[c][i] for c in columns} for i in range(len(batch["input_ids_chosen"]))]
        if not group:
            yield collate(pairs)
            continue
        from rayreward.data.packing import length_grouped_batches

        for chunk in length_grouped_batches(pairs, batch_size, rng=random.Random(f"{seed}:{epoch}:{k}")):
            if drop_last and len(chunk) < batch_size:
                continue
            yield collate(chunk)


class PairBatchStream(torch.utils.data.IterableDataset):
    """``iter_pair_batches`` as an ``IterableDataset`` that moves to the next epoch on
    each pass, for a ``transformers.Trainer`` fed already-collated batches.

    Example:
        >>> stream = PairBatchStream(ray.train.get_dataset_shard("train"), tokenizer, batch_size=8)
    """

    def __init__(self, shard, tokenizer_or_pad_id: Any, batch_size: int, **options: Any):
        self.shard, self.pad, self.batch_size, self.options = shard, tokenizer_or_pad_id, batch_size, options
        self.epoch = 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        yield from iter_pair_batches(self.shard, self.pad, self.batch_size, epoch=epoch, **self.options)


@dataclass(frozen=True)
class StepPlan:
    """Optimizer steps of a run.

    Attributes:
        max_steps: steps to train for.
        steps_per_epoch: optimizer steps per pass over the data (None for a stream).
        pairs_per_worker: pairs each worker sees per epoch (None for a stream).
    """

    max_steps: int
    steps_per_epoch: int | None
    pairs_per_worker: int | None


def plan_steps(
    num_pairs: int | None,
    *,
    num_workers: int,
    per_worker_batch_size: int,
    gradient_accumulation_steps: int = 1,
    num_epochs: float = 1.0,
    max_steps: int | None = None,
    drop_last: bool = False,
) -> StepPlan:
    """Turns the data size and epochs into optimizer steps (derived, never written back).

    Ray Train splits the data set into ``num_workers`` equal shards, dropping the
    remainder (``streaming_split(equal=True)``), so each worker sees
    ``num_pairs // num_workers`` pairs per epoch.

    Args:
        num_pairs: training pairs (``PreparedData.num_train_pairs``); None for a stream.
        num_workers: training workers.
        per_worker_batch_size: pairs per batch on each worker.
        gradient_accumulation_steps: batches per optimizer step.
        num_epochs: passes over the data (fractions allowed).
        max_steps: when set (> 0), wins over ``num_epochs``.
        drop_last: whether a last partial batch is dropped.

    Raises:
        ValueError: a stream without ``max_steps``, or fewer pairs than workers.
    """
    explicit = max_steps if max_steps is not None and max_steps > 0 else None
    if num_pairs is None:
        if explicit is None:
            raise ValueError(
                "the training data is a stream of unknown size (data.materialize: false), so epochs cannot "
                "be turned into steps; set train.max_steps"
            )
        return StepPlan(explicit, None, None)
    per_worker = num_pairs // num_workers
    if per_worker == 0:
        raise ValueError(f"{num_pairs} training pairs cannot be shared among {num_workers} workers; add data")
    batches = per_worker // per_worker_batch_size if drop_last else math.ceil(per_worker / per_worker_batch_size)
    if batches == 0:
        raise ValueError(
            f"each worker gets {per_worker} pairs, fewer than one batch of {per_worker_batch_size} with drop_last"
        )
    steps_per_epoch = max(1, math.ceil(batches / gradient_accumulation_steps))
    total = explicit if explicit is not None else max(1, math.ceil(num_epochs * steps_per_epoch))
    return StepPlan(total, steps_per_epoch, per_worker)
