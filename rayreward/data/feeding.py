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
# The columns of tokenized groups and ratings (rayreward.data.pipeline.groups_table).
GROUP_COLUMNS = ("input_ids_responses", "scores", "input_ids", "labels")


def _rows(batch: dict) -> list[dict]:
    """The examples of a numpy batch (pairs, groups or ratings) as dicts."""
    columns = [c for c in (*PAIR_COLUMNS, "margin", *GROUP_COLUMNS) if c in batch]
    count = len(batch[columns[0]])
    return [{c: batch[c][i] for c in columns} for i in range(count)]


def _collators(pad: "_PadSpec", packing: Any, pad_to_multiple_of: int | None):
    """``(pairs collator, groups/ratings collator)`` for a packing plan (None: padded)."""
    from rayreward.data.group_collators import GroupCollator

    pairs = packing.collator(pad.pad_token_id, pad_to_multiple_of) if packing is not None else None
    groups = packing.group_collator(pad.pad_token_id, pad_to_multiple_of) if packing is not None else None
    return (pairs or RewardDataCollatorWithPadding(pad, pad_to_multiple_of=pad_to_multiple_of),
            groups or GroupCollator(pad.pad_token_id, pad.padding_side, pad_to_multiple_of))


def _collate(collators, examples: list[dict]):
    pairs, groups = collators
    return pairs(examples) if "input_ids_chosen" in examples[0] else groups(examples)


def _example_length(example: dict) -> int:
    if "input_ids_responses" in example:
        return max(len(s) for s in example["input_ids_responses"])
    if "input_ids" in example:
        return len(example["input_ids"])
    from rayreward.data.packing import pair_length

    return pair_length(example)


@dataclass(frozen=True)
class _PadSpec:
    # What the collator needs of a tokenizer, so a worker need not load one.
    pad_token_id: int
    padding_side: str = "right"


def _pad_spec(tokenizer_or_pad_id: Any, padding_side: str | None) -> _PadSpec:
    if isinstance(tokenizer_or_pad_id, int):
        return _PadSpec(tokenizer_or_pad_id, padding_side or "right")
    tok = tokenizer_or_pad_id
    return _PadSpec(tok.pad_token_id, padding_side or getattr(tok, "padding_side", "right"))


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
        packing: a ``rayreward.data.packing.PackingMode`` (``plan_packing(model, args)``):
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
    pad = _pad_spec(tokenizer_or_pad_id, padding_side)
    collators = _collators(pad, packing, pad_to_multiple_of)
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
        pairs = _rows(batch)
        if not group:
            yield _collate(collators, pairs)
            continue
        from rayreward.data.packing import length_grouped_batches

        lengths = [_example_length(p) for p in pairs]
        for chunk in length_grouped_batches(pairs, batch_size, lengths, rng=random.Random(f"{seed}:{epoch}:{k}")):
            if drop_last and len(chunk) < batch_size:
                continue
            yield _collate(collators, chunk)


class BatchStream(torch.utils.data.IterableDataset):
    """A worker's Ray Data shard as ready (collated) batches, epoch after epoch.

    ``RewardTrainer`` recognises it and loads it through ``loader()``: a pass-through
    ``DataLoader`` (``batch_size=None``) that neither re-batches nor lets Accelerate
    shard or dispatch what Ray already split among the workers. Epochs are chained
    (``epochs=None`` never ends; the Trainer stops at ``max_steps``) so that on resume
    the Trainer's skip of ``global_step`` batches lands on the same position of the
    same epoch, even past the first one.

    Args:
        shard: a Ray ``DataIterator`` (``ray.train.get_dataset_shard("train")``).
        tokenizer_or_pad_id: the tokenizer (or its pad token id) used to pad.
        batch_size: pairs per batch.
        epochs: passes over the shard; None for an endless stream.
        kind: what the shard holds: ``pairs``, ``groups`` (ranked) or ``ratings``.
        **options: the keyword arguments of ``iter_pair_batches``.

    Example:
        >>> stream = BatchStream(ray.train.get_dataset_shard("train"), tokenizer, 8, epochs=None)
    """

    def __init__(self, shard, tokenizer_or_pad_id: Any, batch_size: int, epochs: int | None = None,
                 kind: str = "pairs", **options: Any):
        self.shard, self.pad, self.batch_size = shard, tokenizer_or_pad_id, batch_size
        self.epochs, self.options = epochs, options
        self.kind = kind  # "pairs", "groups" or "ratings": what RewardTrainer trains on
        # The packing plan its batches follow: RewardTrainer takes it as its own rather than
        # resolving the same plan a second time.
        self.packing = options.get("packing")
        # Ratings: per-attribute (mean, std) of the whole training set, for standardize_targets.
        self.label_stats: tuple[list[float], list[float]] | None = None

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            yield from iter_pair_batches(self.shard, self.pad, self.batch_size, epoch=epoch, **self.options)
            epoch += 1

    def loader(self) -> torch.utils.data.DataLoader:
        """A ``DataLoader`` that hands the stream's batches through unchanged."""
        return torch.utils.data.DataLoader(self, batch_size=None)


class GlobalBatchStream(BatchStream):
    """Elastic training's feed: this rank's part of each global batch, in one order for all world sizes.

    Every worker reads the whole training set (not a shard) in the same seeded order,
    epoch after epoch with no gap, cut into global batches of ``global_batch`` pairs.
    Worker ``rank`` of ``world_size`` takes its contiguous slice of each global batch
    (``numpy.array_split``: slices differ by at most one pair) and splits it into
    ``accumulation_steps(global_batch, batch_size, world_size)`` micro-batches, one
    optimizer step per global batch. Step ``k`` therefore always trains on pairs
    ``[k * global_batch, (k + 1) * global_batch)`` of the stream, whatever the world
    size was before: after a resize, the Trainer's skip of ``global_step`` steps of
    micro-batches lands exactly where the last checkpoint stopped, with no pair skipped
    or seen twice. The price: each worker reads every pair (and drops the others'
    slices), so the read cost grows with the worker count.

    Length grouping does not apply here (it would reorder pairs across slices); a
    packing collator does (each micro-batch is packed as it is).

    Args:
        dataset: a Ray ``DataIterator`` over the whole (unsplit, order-preserving)
            training set.
        tokenizer_or_pad_id: the tokenizer (or its pad token id) used to pad.
        batch_size: the most pairs per micro-batch (``per_device_train_batch_size``);
            a slice may put one pair more into a micro-batch when it does not divide.
        global_batch: pairs per optimizer step, the same at every world size.
        rank: this worker's rank.
        world_size: workers now.
        shuffle: ``local``/``global`` (seeded buffer, ``seed + epoch``) or ``none``.
        shuffle_buffer_size: pairs in the shuffle buffer.
        seed: base seed of the buffer.
        packing: a ``PackingMode`` whose collator packs micro-batches, or None.
        pad_to_multiple_of: round padded lengths up to a multiple of this.

    Example:
        >>> stream = GlobalBatchStream(ray.train.get_dataset_shard("train"), tokenizer, 8,
        ...                            global_batch=32, rank=0, world_size=2)
    """

    def __init__(self, dataset, tokenizer_or_pad_id: Any, batch_size: int, *, global_batch: int, rank: int,
                 world_size: int, shuffle: str = "local", shuffle_buffer_size: int = 1000, seed: int = 42,
                 packing: Any = None, pad_to_multiple_of: int | None = None, kind: str = "pairs"):
        super().__init__(dataset, tokenizer_or_pad_id, batch_size, epochs=None, kind=kind)
        if not 0 <= rank < world_size <= global_batch:
            raise ValueError(f"rank {rank} of {world_size} workers cannot share global batches of {global_batch}")
        self.global_batch, self.rank, self.world_size = global_batch, rank, world_size
        self.shuffle, self.shuffle_buffer_size, self.seed = shuffle, shuffle_buffer_size, seed
        self.accumulation = accumulation_steps(global_batch, batch_size, world_size)
        self.packing = packing
        self.collators = _collators(_pad_spec(tokenizer_or_pad_id, None), packing, pad_to_multiple_of)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        import numpy as np

        for pairs in self.global_batches():
            mine = np.array_split(np.arange(len(pairs)), self.world_size)[self.rank]
            for part in np.array_split(mine, self.accumulation):
                yield _collate(self.collators, [pairs[i] for i in part])

    def global_batches(self) -> Iterator[list[dict]]:
        """The stream's global batches as lists of pairs (the same on every worker)."""
        pending: list[dict] = []
        epoch = 0
        while True:
            options: dict[str, Any] = {}
            if self.shuffle != "none" and self.shuffle_buffer_size > 1:
                options = {"local_shuffle_buffer_size": self.shuffle_buffer_size,
                           "local_shuffle_seed": self.seed + epoch}
            seen = 0
            # A fixed read batch (not one that depends on the world size) keeps the
            # shuffle buffer's order the same at every world size.
            for batch in self.shard.iter_batches(batch_size=self.global_batch, batch_format="numpy", **options):
                rows = _rows(batch)
                count = len(rows)
                pending += rows
                seen += count
                while len(pending) >= self.global_batch:
                    yield pending[:self.global_batch]
                    pending = pending[self.global_batch:]
            if seen == 0:
                return
            epoch += 1


@dataclass(frozen=True)
class FeedSpec:
    """How every worker feeds its trainer, decided once for a run.

    Attributes:
        train_batch_size: pairs per training micro-batch (``per_device_train_batch_size``).
        eval_batch_size: pairs per evaluation batch (``per_device_eval_batch_size``).
        shuffle: ``local``, ``global`` or ``none`` (see ``iter_pair_batches``).
        shuffle_buffer_size: pairs in the shuffle buffer.
        seed: base seed of the shuffle buffer.
        length_group_batches: batches per length-grouping buffer (when the model groups).
        global_batch: pairs per optimizer step of an elastic run, the same at every
            world size (``GlobalBatchStream``); None for a fixed-size run, whose workers
            each read their own shard.
        has_eval: whether the run has eval pairs (an ``eval`` dataset shard).
        kind: what the shards hold: ``pairs``, ``groups`` (ranked) or ``ratings``.
    """

    train_batch_size: int
    eval_batch_size: int
    shuffle: str = "local"
    shuffle_buffer_size: int = 1000
    seed: int = 42
    length_group_batches: int = 50
    global_batch: int | None = None
    has_eval: bool = False
    kind: str = "pairs"

    def accumulation(self, world_size: int) -> int | None:
        """Micro-batches per step on ``world_size`` workers of an elastic run; None otherwise."""
        if self.global_batch is None:
            return None
        return accumulation_steps(self.global_batch, self.train_batch_size, world_size)


def batch_streams(feed: FeedSpec, shard, tokenizer_or_pad_id: Any, packing: Any, *, rank: int,
                  world_size: int) -> tuple[BatchStream, BatchStream | None]:
    """A worker's training stream (endless) and evaluation stream (one pass, or None).

    Args:
        feed: the run's feeding settings.
        shard: ``name -> DataIterator`` (``ray.train.get_dataset_shard``); ``eval`` is
            asked for only when ``feed.has_eval``.
        tokenizer_or_pad_id: the tokenizer (or its pad token id) used to pad.
        packing: the model's ``PackingMode`` (``plan_packing``) for training batches.
        rank: this worker's rank.
        world_size: workers now.
    """
    order = {"shuffle": feed.shuffle, "shuffle_buffer_size": feed.shuffle_buffer_size, "seed": feed.seed,
             "packing": packing, "kind": feed.kind}
    if feed.global_batch is None:
        train = BatchStream(shard("train"), tokenizer_or_pad_id, feed.train_batch_size, epochs=None,
                            length_group_batches=feed.length_group_batches, **order)
    else:
        train = GlobalBatchStream(shard("train"), tokenizer_or_pad_id, feed.train_batch_size,
                                  global_batch=feed.global_batch, rank=rank, world_size=world_size, **order)
    evaluation = None
    if feed.has_eval:
        evaluation = BatchStream(shard("eval"), tokenizer_or_pad_id, feed.eval_batch_size, shuffle="none", epochs=1,
                                 kind=feed.kind)
    return train, evaluation


def accumulation_steps(global_batch: int, batch_size: int, world_size: int) -> int:
    """Micro-batches per optimizer step that keep ``global_batch`` pairs per step on ``world_size`` workers.

    Each worker's slice (``global_batch / world_size`` pairs, rounded either way) is cut
    into this many micro-batches of at most ``batch_size`` pairs (one more where the
    slice does not divide), never more micro-batches than the smaller slice has pairs.

    Example:
        >>> accumulation_steps(32, 8, 2), accumulation_steps(32, 8, 1)
        (2, 4)
    """
    largest, smallest = -(-global_batch // world_size), global_batch // world_size
    return max(1, min(-(-largest // batch_size), smallest))


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
    global_batches: bool = False,
) -> StepPlan:
    """Turns the data size and epochs into optimizer steps (derived, never written back).

    Ray Train splits the data set into ``num_workers`` equal shards, dropping the
    remainder (``streaming_split(equal=True)``), so each worker sees
    ``num_pairs // num_workers`` pairs per epoch. With ``global_batches`` (elastic
    training, ``GlobalBatchStream``) nothing is dropped: every step takes the next
    ``num_workers * per_worker_batch_size * gradient_accumulation_steps`` pairs of one
    endless stream, so an epoch is ``num_pairs / global batch`` steps.

    Args:
        num_pairs: training pairs (``PreparedData.num_train_pairs``); None for a stream.
        num_workers: training workers.
        per_worker_batch_size: pairs per batch on each worker.
        gradient_accumulation_steps: batches per optimizer step.
        num_epochs: passes over the data (fractions allowed).
        max_steps: when set (> 0), wins over ``num_epochs``.
        drop_last: whether a last partial batch is dropped.
        global_batches: plan for ``GlobalBatchStream`` (``num_workers`` is then the
            most workers, the world size the global batch is sized for).

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
    if global_batches:
        global_batch = num_workers * per_worker_batch_size * gradient_accumulation_steps
        if num_pairs < global_batch:
            raise ValueError(f"{num_pairs} training pairs are fewer than one global batch of {global_batch}; add data")
        steps_per_epoch = math.ceil(num_pairs / global_batch)
        total = explicit if explicit is not None else max(1, math.ceil(num_epochs * num_pairs / global_batch))
        return StepPlan(total, steps_per_epoch, None)
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
