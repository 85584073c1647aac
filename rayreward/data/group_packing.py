"""Packing a group of K responses: the prompt once, then the K responses after it.

The generalisation of shared-prefix pairs (``rayreward.data.packing``): a group becomes
one *unit*, the tokens its K sequences share at the start (the prompt) followed by each
response's continuation. Every continuation attends to the shared prefix and to itself
only, and its positions restart where the prefix ends, so each token sees exactly what
it sees in a separate ``prompt + response`` forward pass: the rewards are those of K
separate rows (to float rounding), for the prompt's tokens computed once instead of K
times. Units are packed first-fit-decreasing into rows as pairs are (``padding_free``).

A rated response is a unit with no prefix and one continuation, so ratings pack
padding-free the same way.

The batch has the pair layout's ``packed_*`` tensors (branch 0 is the prefix, branch
``k + 1`` the k-th response; ``packed_attention_mask`` of ``rayreward.data.packing``
builds the mask unchanged) and ``response_index`` (responses x 2: row and column where
each reward is read), plus ``scores`` and ``group_index`` (groups) or ``ratings``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from rayreward.data.group_collators import _ids, group_sequences, is_group_feature
from rayreward.data.packing import _strip_trailing, packed_rows, place_unit


def shared_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    """Tokens all of ``seqs`` share at the start; each keeps at least its last token."""
    limit = min(len(s) for s in seqs) - 1
    n = 0
    while n < limit and all(s[n] == seqs[0][n] for s in seqs[1:]):
        n += 1
    return n


@dataclass
class PackedGroupCollator:
    """Packs ranked groups (or rated responses) into rows for ``packed_group_rewards``.

    Args:
        pad_token_id: id put at the padded ends of rows; trailing pad tokens of a
            sequence are dropped, as the padded path never reads them.
        share_prefix: compute each group's shared prompt once.
        padding_free: several units per row; otherwise one unit per row.
        row_tokens: length of a packed row; defaults to the longest unit of the batch.
        pad_to_multiple_of: round the row length up to a multiple of this.
    """

    pad_token_id: int
    share_prefix: bool = True
    padding_free: bool = True
    row_tokens: int | None = None
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        return pack_groups(features, self.pad_token_id, share_prefix=self.share_prefix,
                           padding_free=self.padding_free, row_tokens=self.row_tokens,
                           pad_to_multiple_of=self.pad_to_multiple_of)


def pack_groups(
    features: Sequence[Mapping[str, Any]],
    pad_token_id: int,
    *,
    share_prefix: bool = True,
    padding_free: bool = True,
    row_tokens: int | None = None,
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Packs groups or rated responses; see ``PackedGroupCollator`` for the arguments."""
    if not features:
        raise ValueError("cannot pack an empty list of examples")
    groups = is_group_feature(features[0])
    if groups:
        seqs, scores, index = group_sequences(features)
    else:
        seqs, index = [_ids(f["input_ids"]) for f in features], list(range(len(features)))
    seqs = [_strip_trailing(s, pad_token_id) for s in seqs]
    members: list[list[int]] = [[] for _ in features]
    for i, g in enumerate(index):
        members[g].append(i)
    units = []  # (prefix, [(response number, continuation)])
    for g, responses in enumerate(members):
        p = shared_prefix_length([seqs[i] for i in responses]) if share_prefix and len(responses) > 1 else 0
        units.append((seqs[responses[0]][:p], [(i, seqs[i][p:]) for i in responses]))
    sizes = [len(pre) + sum(len(c) for _, c in conts) for pre, conts in units]
    rows, length = packed_rows(sizes, padding_free, row_tokens, pad_to_multiple_of)
    shape = (len(rows), length)
    ids = torch.full(shape, pad_token_id, dtype=torch.long)
    pos = torch.zeros(shape, dtype=torch.long)
    seq = torch.full(shape, -1, dtype=torch.long)
    branch = torch.zeros(shape, dtype=torch.long)
    response_index = torch.zeros((len(seqs), 2), dtype=torch.long)
    for r, row_units in enumerate(rows):
        col = 0
        for u in row_units:
            prefix, conts = units[u]
            ends, col = place_unit((ids, pos, seq, branch), r, col, u,
                                   [(prefix, 0)] + [(c, k + 1) for k, (_, c) in enumerate(conts)])
            for k, (response, _) in enumerate(conts):
                if k + 1 in ends:
                    response_index[response] = torch.tensor([r, ends[k + 1]])
    batch = {
        "response_index": response_index,
        "packed_input_ids": ids,
        "packed_position_ids": pos,
        "packed_sequence_ids": seq,
        "packed_branch_ids": branch,
    }
    if groups:
        batch["scores"] = torch.tensor(scores, dtype=torch.float)
        batch["group_index"] = torch.tensor(index, dtype=torch.long)
    else:
        labels = [[float("nan") if v is None else float(v) for v in
                   (f["labels"].tolist() if hasattr(f["labels"], "tolist") else f["labels"])] for f in features]
        batch["ratings"] = torch.tensor(labels, dtype=torch.float)
    batch["return_loss"] = True
    return batch


__all__ = ["PackedGroupCollator", "pack_groups", "shared_prefix_length"]
