"""Fewer wasted tokens: length-grouped batches, padding-free and shared-prefix packing.

A padded batch of preference pairs spends most of its compute on padding (every
sequence is padded to the longest of the batch) and on the prompt, which chosen and
rejected repeat. Three features remove that work without changing the result:

Length grouping
    Pairs are sorted by length inside a shuffle buffer and cut into batches; the
    batches of a buffer are then shuffled, and the buffers come in random order, so
    training order stays random at the scale of a buffer. ``length_grouped_batches``
    does it for one buffer of a streamed Ray shard: transformers' ``LengthGroupedSampler``
    (which the in-process trainer uses) needs every length up front, which a stream
    does not have. On by default where batches are padded (encoders); packed rows need
    it not.

Shared-prefix packing (causal decoders)
    Chosen and rejected usually start with the same tokens (the dialogue so far). A
    pair becomes one *unit*: the common prefix once, then the chosen continuation, then
    the rejected one. Each continuation attends to the prefix and to itself only, and
    its positions continue from the end of the prefix, so every token sees exactly what
    it would see in a separate forward pass: rewards and gradients are those of the
    plain path (to float rounding).

Padding-free packing (causal decoders)
    Units are packed first-fit-decreasing into rows no longer than the longest unit of
    the batch, with per-sequence position ids and an attention mask that never crosses
    units. Only the ends of rows are padded.

The packed batch carries token ids, positions, a sequence id and a branch id per token
(0: shared prefix, 1: chosen, 2: rejected) and the (row, column) where each reward is
read. ``packed_rewards`` turns the ids into a block-diagonal 4D mask on the model's
device, runs the model through its own ``forward`` (so DDP, DeepSpeed and PEFT wrappers
see a normal call) and reads the reward head's per-token output at those places.

Encoders (BERT and the like) attend both ways: a token of the shared prefix would see a
different continuation in each pass, so prefix sharing is inexact there, and their
reward is read at the first token, not the last. For them only length grouping is on.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from rayreward.data.collators import real_token_ids

logger = logging.getLogger(__name__)

PREFIX, CHOSEN, REJECTED = 0, 1, 2


# -- length grouping -------------------------------------------------------------------


def pair_length(pair: Mapping[str, Any]) -> int:
    """Length of a tokenized pair for grouping: its longer side, in real tokens."""
    return max(len(real_token_ids(pair, "chosen")), len(real_token_ids(pair, "rejected")))


def length_grouped_batches(
    items: Sequence[Any],
    batch_size: int,
    lengths: Sequence[int] | None = None,
    rng: random.Random | int | None = None,
) -> list[list[Any]]:
    """Cuts one shuffle buffer into batches of pairs of similar length.

    The buffer is sorted by length (ties in random order) and cut into batches of
    ``batch_size``; the full batches come out in random order. When the buffer does not
    divide evenly, one shorter batch of neighbouring lengths comes out last.

    Args:
        items: the pairs of the buffer (or anything, with ``lengths`` given).
        batch_size: pairs per batch.
        lengths: one length per item; defaults to ``pair_length`` of each item.
        rng: a ``random.Random`` or a seed.

    Returns:
        The batches, as lists of items.

    Example:
        >>> length_grouped_batches(["a", "bbbb", "cc", "dddd"], 2, [1, 4, 2, 4], rng=0)
        [['bbbb', 'dddd'], ['a', 'cc']]  # or the other order
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: got {batch_size}; expected a positive integer")
    rng = rng if isinstance(rng, random.Random) else random.Random(rng)
    lengths = [pair_length(p) for p in items] if lengths is None else list(lengths)
    if len(lengths) != len(items):
        raise ValueError(f"got {len(lengths)} lengths for {len(items)} items")
    order = sorted(range(len(items)), key=lambda i: (lengths[i], rng.random()))
    n_full, rest = divmod(len(order), batch_size)
    # The short batch takes a random place in the sorted order, so it does not always
    # hold the longest pairs of the buffer.
    split = rng.randint(0, n_full) * batch_size if rest else len(order)
    full = [order[k : k + batch_size] for k in range(0, split, batch_size)]
    full += [order[k : k + batch_size] for k in range(split + rest, len(order), batch_size)]
    rng.shuffle(full)
    batches = full + ([order[split : split + rest]] if rest else [])
    return [[items[i] for i in b] for b in batches]


# -- packing ---------------------------------------------------------------------------


@dataclass
class PackedPairCollator:
    """Packs tokenized pairs into rows for ``packed_rewards`` (causal decoders only).

    Args:
        pad_token_id: id put at the padded ends of rows. Trailing tokens equal to it
            are also dropped from each sequence: the plain path reads the reward at the
            last token that is not padding, so they never count there either.
        share_prefix: compute the common prefix of chosen and rejected once.
        padding_free: pack several pairs into one row; without it each pair has its
            own row (its prefix and both continuations) and rows are padded.
        row_tokens: length of a packed row; defaults to the longest pair of the batch,
            which keeps attention cost no higher than one row per pair.
        pad_to_multiple_of: round the row length up to a multiple of this.

    Example:
        >>> collate = PackedPairCollator(pad_token_id=0)
        >>> batch = collate([{"input_ids_chosen": [5, 6, 7], "input_ids_rejected": [5, 6, 8]}])
        >>> batch["packed_input_ids"]  # tensor([[5, 6, 7, 8]]): prefix [5, 6] once
    """

    pad_token_id: int
    share_prefix: bool = True
    padding_free: bool = True
    row_tokens: int | None = None
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        return pack_pairs(
            features, self.pad_token_id, share_prefix=self.share_prefix, padding_free=self.padding_free,
            row_tokens=self.row_tokens, pad_to_multiple_of=self.pad_to_multiple_of,
        )


def pack_pairs(
    features: Sequence[Mapping[str, Any]],
    pad_token_id: int,
    *,
    share_prefix: bool = True,
    padding_free: bool = True,
    row_tokens: int | None = None,
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Packs pairs into rows; see ``PackedPairCollator`` for the arguments.

    Returns:
        ``chosen_index`` and ``rejected_index`` (pairs x 2: row and column where each
        reward is read; first, so that ``transformers``' batch-size probe counts pairs),
        ``packed_input_ids``, ``packed_position_ids``, ``packed_sequence_ids`` (the
        pair a token belongs to, -1 for padding), ``packed_branch_ids`` (0 prefix,
        1 chosen, 2 rejected), ``packed_units`` (pairs x 5: row, start, prefix end, chosen
        end, end; what the block-sparse attention backends of ``rayreward.core.attention``
        compute over), ``margin`` when the pairs have one, and ``return_loss``.
    """
    if not features:
        raise ValueError("cannot pack an empty list of pairs")
    units = []
    for f in features:
        chosen = _strip_trailing(real_token_ids(f, "chosen"), pad_token_id)
        rejected = _strip_trailing(real_token_ids(f, "rejected"), pad_token_id)
        p = _common_prefix(chosen, rejected) if share_prefix else 0
        units.append((chosen[:p], chosen[p:], rejected[p:]))
    sizes = [len(pre) + len(c) + len(r) for pre, c, r in units]
    rows, length = packed_rows(sizes, padding_free, row_tokens, pad_to_multiple_of)

    shape = (len(rows), length)
    ids = torch.full(shape, pad_token_id, dtype=torch.long)
    pos = torch.zeros(shape, dtype=torch.long)
    seq = torch.full(shape, -1, dtype=torch.long)
    branch = torch.zeros(shape, dtype=torch.long)
    chosen_index = torch.zeros((len(units), 2), dtype=torch.long)
    rejected_index = torch.zeros((len(units), 2), dtype=torch.long)
    places = torch.zeros((len(units), 5), dtype=torch.long)
    for r, members in enumerate(rows):
        col = 0
        for i in members:
            prefix, cont_c, cont_r = units[i]
            places[i] = torch.tensor([r, col, col + len(prefix), col + len(prefix) + len(cont_c), col + sizes[i]])
            ends, col = place_unit((ids, pos, seq, branch), r, col, i,
                                   [(prefix, PREFIX), (cont_c, CHOSEN), (cont_r, REJECTED)])
            for kind, index in ((CHOSEN, chosen_index), (REJECTED, rejected_index)):
                if kind in ends:
                    index[i] = torch.tensor([r, ends[kind]])
    batch = {
        "chosen_index": chosen_index,
        "rejected_index": rejected_index,
        "packed_input_ids": ids,
        "packed_position_ids": pos,
        "packed_sequence_ids": seq,
        "packed_branch_ids": branch,
        "packed_units": places,
    }
    if "margin" in features[0]:
        batch["margin"] = torch.tensor([float(f["margin"]) for f in features], dtype=torch.float)
    batch["return_loss"] = True
    return batch


def packed_rows(sizes: Sequence[int], padding_free: bool, row_tokens: int | None = None,
                pad_to_multiple_of: int | None = None) -> tuple[list[list[int]], int]:
    """Which units (pairs, groups) share each row of a packed batch, and the row length.

    Padding-free: first-fit decreasing into rows of ``max(largest unit, row_tokens)``
    tokens (few rows, each filled close to capacity); otherwise one unit a row. The
    length is the fullest row's, rounded up to ``pad_to_multiple_of``.
    """
    if padding_free:
        capacity = max(max(sizes), row_tokens or 0)
        rows: list[list[int]] = []
        fill: list[int] = []
        for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
            slot = next((r for r, used in enumerate(fill) if used + sizes[i] <= capacity), None)
            if slot is None:
                rows.append([])
                fill.append(0)
                slot = len(rows) - 1
            rows[slot].append(i)
            fill[slot] += sizes[i]
    else:
        rows, fill = [[i] for i in range(len(sizes))], list(sizes)
    length = max(fill)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    return rows, length


def place_unit(tensors, row: int, col: int, unit: int, parts) -> tuple[dict[int, int], int]:
    """Writes one packed unit into row ``row`` from column ``col``: its shared prefix
    (branch 0) and then its continuations (branches 1, 2, ...), each continuation's
    positions restarting where the prefix ends.

    Args:
        tensors: ``(ids, positions, sequence ids, branch ids)``, each ``(rows, length)``.
        parts: ``[(token ids, branch), ...]``, the prefix (branch 0) first.

    Returns:
        ``({branch: column of its last token}, the column after the unit)``; empty
        parts take no column and have no entry.
    """
    ids, pos, seq, branch = tensors
    prefix = len(parts[0][0])
    ends = {}
    for part, kind in parts:
        n = len(part)
        if n == 0:
            continue
        span = slice(col, col + n)
        ids[row, span] = torch.as_tensor(part, dtype=torch.long)
        start = prefix if kind != PREFIX else 0
        pos[row, span] = torch.arange(start, start + n)
        seq[row, span] = unit
        branch[row, span] = kind
        ends[kind] = col + n - 1
        col += n
    return ends, col


def is_packed(batch: Mapping[str, Any]) -> bool:
    """Whether a collated batch comes from ``pack_pairs``."""
    return "packed_input_ids" in batch


def packed_attention_mask(sequence_ids: torch.Tensor, branch_ids: torch.Tensor) -> torch.Tensor:
    """Boolean ``(rows, 1, T, T)`` mask, True where a query token may attend a key token.

    A token attends earlier tokens of its own pair that are in the shared prefix or in
    its own branch. Padding attends to padding (never to real tokens), so no row of the
    softmax is empty and no NaN reaches the gradients.
    """
    t = sequence_ids.shape[1]
    same_pair = sequence_ids[:, :, None] == sequence_ids[:, None, :]
    key_branch = branch_ids[:, None, :]
    visible = (key_branch == PREFIX) | (key_branch == branch_ids[:, :, None])
    causal = torch.ones(t, t, dtype=torch.bool, device=sequence_ids.device).tril()
    return (same_pair & visible & causal)[:, None]


def _strip_trailing(ids: list[int], pad_token_id: int) -> list[int]:
    end = len(ids)
    while end > 1 and ids[end - 1] == pad_token_id:
        end -= 1
    return ids[:end]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    # Each side keeps at least its last token, where its reward is read.
    limit = min(len(a), len(b)) - 1
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n


__all__ = [
    "PackedPairCollator",
    "length_grouped_batches",
    "pack_pairs",
    "packed_attention_mask",
    "pair_length",
]
