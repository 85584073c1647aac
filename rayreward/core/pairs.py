"""The trainer's data: preference pairs checked and tokenized in this process.

``RewardTrainer`` accepts what TRL's accepts and what the seed's did:

- a list of dicts (or any sized sequence of rows): tokenized into a ``PairDataset``
  whose rows have the seed's ``input_ids_chosen``/``attention_mask_chosen``/... keys;
- a ``datasets.Dataset``: tokenized with ``Dataset.map`` (``dataset_num_proc``
  processes) into a ``datasets.Dataset`` with TRL 1.x's columns ``chosen_ids``,
  ``rejected_ids`` (and ``margin``). Its rows also read under the seed's keys
  (``input_ids_chosen``, ``attention_mask_chosen``, ...), added on access by a
  ``datasets`` transform, so code written for either generation finds what it expects;
- a ``datasets.IterableDataset`` (streaming): tokenized on the fly, same columns;
- anything already prepared (a ``PairDataset``, a torch ``IterableDataset`` of tokenized
  rows or of ready batches): passed through.

Every format of ``rayreward.data.formats`` works in each, and the length policy's counts
(``LengthStats``) are kept; for a stream they grow as it is read.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import torch

from rayreward.data.formats import (
    BadRowError,
    ColumnNames,
    DataFormatError,
    LengthStats,
    PairEncoder,
    detect_format,
    row_problem,
)

logger = logging.getLogger(__name__)

_ENCODE_CHUNK = 1024


class PairDataset(torch.utils.data.Dataset):
    """Tokenized pairs held in memory, one dict per pair."""

    def __init__(self, pairs: list[dict[str, Any]]):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.pairs[i]


def tokenize_pairs(
    dataset,
    tokenizer,
    name: str = "dataset",
    max_length: int | None = None,
    length_policy: str = "filter",
    names: ColumnNames = ColumnNames(),
    fmt: str | None = None,
) -> tuple[PairDataset, LengthStats]:
    """Checks and tokenizes a whole data set in this process.

    Args:
        dataset: a ``datasets.Dataset`` or a list of dicts, in any format of
            ``rayreward.data.formats``.
        tokenizer: the tokenizer of the model.
        name: how errors name the data set.
        max_length: see ``RewardConfig.max_length``.
        length_policy: see ``RewardConfig.length_policy``.
        names: column names.
        fmt: the format; detected when None.

    Returns:
        The tokenized pairs and the counts of the length policy.

    Raises:
        DataFormatError: the data set lacks the columns of every format, or all pairs
            were filtered.
        BadRowError: a row is malformed; the message names the row and the field.
    """
    columns = list(getattr(dataset, "column_names", None) or (dataset[0].keys() if len(dataset) else []))
    if len(dataset) == 0:
        raise DataFormatError(f"{name} is empty; it needs at least one preference pair")
    first = dataset[0]
    fmt = fmt or detect_format(columns, first, names, source=name)
    required = _relevant(columns, fmt, names)
    encoder = PairEncoder(tokenizer, fmt, names, max_length, length_policy)
    pairs: list[dict[str, Any]] = []
    chunk: list[Mapping[str, Any]] = []
    for i, row in enumerate(dataset):
        for col in required:
            if col not in row:
                raise BadRowError(name, i, col, f"missing; the first row has '{col}', so every row needs it")
        # A column only some rows have (a margin on a few pairs) would give batches of
        # different shapes; the first row sets the columns for all.
        for col in _relevant(row, fmt, names):
            if col not in required:
                raise BadRowError(
                    name, i, col, f"present, but the first row has no '{col}'; give it to every row or to none"
                )
        problem = row_problem(row, fmt, names)
        if problem:
            raise BadRowError(name, i, *problem)
        chunk.append(row)
        if len(chunk) == _ENCODE_CHUNK:
            pairs += [p for p in encoder.encode_rows(chunk) if p is not None]
            chunk = []
    if chunk:
        pairs += [p for p in encoder.encode_rows(chunk) if p is not None]
    _check_kept(encoder.stats, name, max_length, length_policy)
    return PairDataset(pairs), encoder.stats


def _relevant(cols, fmt: str, names: ColumnNames) -> list[str]:
    if fmt == "pretokenized":
        return [c for c in cols if c.startswith(("input_ids_", "attention_mask_")) or c == names.margin]
    if fmt == "token_ids":
        return [c for c in cols if c.endswith("_ids") or c.endswith("_input_ids") or c == names.margin]
    return [c for c in cols if c in (names.chosen, names.rejected, names.prompt, names.margin)]


def _check_kept(stats: LengthStats, name: str, max_length: int | None, length_policy: str) -> None:
    if max_length is not None:
        logger.info("%s: %s", name, stats.describe(max_length, length_policy))
    if stats.pairs and stats.filtered == stats.pairs:
        raise DataFormatError(
            f"{name}: all {stats.pairs} pairs are longer than max_length={max_length} tokens "
            f"(the longest has {stats.longest}); raise max_length or use length_policy='truncate'"
        )


# -- datasets.Dataset / IterableDataset -------------------------------------------------

_KEEP, _LONGEST, _TRUNCATED = "__rayreward_keep", "__rayreward_longest", "__rayreward_truncated"


class _BatchEncoder:
    """``datasets`` map function: checks rows and encodes them into TRL's columns.

    A class (not a closure) so that ``Dataset.map(num_proc=...)`` can pickle it; the
    per-row length outcome travels in helper columns that the caller drops, because
    counts kept in worker processes would be lost.
    """

    def __init__(self, tokenizer, fmt: str, name: str, max_length: int | None, length_policy: str,
                 live_stats: LengthStats | None = None):
        # Raw ids from the encoder; the length policy is applied here, per row, so that
        # each row can say what happened to it.
        self.encoder = PairEncoder(tokenizer, fmt, ColumnNames(), None, length_policy)
        self.policy = PairEncoder(tokenizer, fmt, ColumnNames(), max_length, length_policy)
        self.fmt, self.name, self.live_stats = fmt, name, live_stats
        self.max_length, self.length_policy = max_length, length_policy

    def __call__(self, batch: Mapping[str, list], indices: Sequence[int]) -> dict[str, list]:
        keys = list(batch)
        rows = [{k: batch[k][j] for k in keys} for j in range(len(indices))]
        for i, row in zip(indices, rows):
            problem = row_problem(row, self.fmt)
            if problem:
                raise BadRowError(self.name, i, *problem)
        out: dict[str, list] = {"chosen_ids": [], "rejected_ids": [], _KEEP: [], _LONGEST: [], _TRUNCATED: []}
        if "margin" in keys:
            out["margin"] = [float(row["margin"]) for row in rows]
        for pair in self.encoder.encode_rows(rows):
            chosen, rejected = pair["input_ids_chosen"], pair["input_ids_rejected"]
            longest = max(len(chosen), len(rejected))
            over = self.max_length is not None and longest > self.max_length
            keep = not over or self.length_policy == "truncate"
            if over and keep:
                chosen, rejected = self.policy.truncate(chosen), self.policy.truncate(rejected)
            out["chosen_ids"].append(chosen if keep else [])
            out["rejected_ids"].append(rejected if keep else [])
            out[_KEEP].append(keep)
            out[_TRUNCATED].append(over and keep)
            out[_LONGEST].append(longest)
            if self.live_stats is not None:
                self.live_stats.add(LengthStats(1, int(not keep), int(over and keep), longest))
        return out


def _with_seed_keys(batch: dict[str, list]) -> dict[str, list]:
    """A ``datasets`` transform: TRL's columns, read under the seed's keys as well."""
    for side in ("chosen", "rejected"):
        ids = batch.get(f"{side}_ids")
        if ids is not None:
            batch[f"input_ids_{side}"] = ids
            batch[f"attention_mask_{side}"] = [[1] * len(x) for x in ids]
    return batch


def prepare_hf_dataset(dataset, tokenizer, name: str, max_length: int | None, length_policy: str,
                       num_proc: int | None = None):
    """Tokenizes a ``datasets.Dataset`` or ``datasets.IterableDataset`` into TRL 1.x's columns.

    Args:
        dataset: the rows, in any format of ``rayreward.data.formats``.
        tokenizer: the model's tokenizer.
        name: how errors and counts name the data set.
        max_length: see ``RewardConfig.max_length``.
        length_policy: see ``RewardConfig.length_policy``.
        num_proc: processes for ``Dataset.map`` (not used for a stream).

    Returns:
        ``(dataset, stats)``: the same kind of data set with columns ``chosen_ids``,
        ``rejected_ids`` (and ``margin``), rows also readable under the seed's keys; and
        the length policy's counts (a stream's grow as it is read).

    Raises:
        DataFormatError: no format fits, the set is empty, or every pair was filtered.
        BadRowError: a malformed row (for a stream, when it is read).
    """
    import datasets

    streaming = isinstance(dataset, datasets.IterableDataset)
    try:
        first = next(iter(dataset))
    except StopIteration:
        raise DataFormatError(f"{name} is empty; it needs at least one preference pair") from None
    columns = list(first)
    fmt = detect_format(columns, first, ColumnNames(), source=name)
    stats = LengthStats()
    encode = _BatchEncoder(tokenizer, fmt, name, max_length, length_policy, live_stats=stats if streaming else None)
    helpers = [_KEEP, _LONGEST, _TRUNCATED]
    if streaming:
        mapped = dataset.map(encode, batched=True, with_indices=True, remove_columns=columns)
        mapped = mapped.filter(lambda row: row[_KEEP]).remove_columns(helpers)
        return mapped.with_format(None).map(_with_seed_keys, batched=True), stats
    mapped = dataset.map(encode, batched=True, with_indices=True, remove_columns=columns, num_proc=num_proc,
                         desc=f"Tokenizing {name}")
    keep = mapped[_KEEP]
    stats.pairs = len(keep)
    stats.filtered = sum(not k for k in keep)
    stats.truncated = sum(mapped[_TRUNCATED])
    stats.longest = max(mapped[_LONGEST], default=0)
    _check_kept(stats, name, max_length, length_policy)
    if stats.filtered:
        mapped = mapped.select([i for i, k in enumerate(keep) if k])
    return mapped.remove_columns(helpers).with_transform(_with_seed_keys), stats
