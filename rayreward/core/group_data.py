"""The trainer's data when it is not pairs: ranked groups and ratings, tokenized in this process.

``RewardTrainer`` hands a data set here when its columns are one of the shapes of
``rayreward.data.groups`` (``responses`` + ``ranking``/``scores``; ``chosen``/``rejected``
lists; ``response`` + attribute columns). A list of dicts and a ``datasets.Dataset`` are
read the same way, row by row, with every row checked (row number and field in the
error) and the length policy counted as for pairs. A streaming ``datasets.IterableDataset``
becomes a ``GroupStream``, checked and tokenized as it is read (set ``max_steps``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from rayreward.data.formats import BadRowError, ColumnNames, DataFormatError, LengthStats
from rayreward.data.groups import GroupEncoder, check_attribute_columns, detect_group_format, group_row_problem

_ENCODE_CHUNK = 256


class GroupDataset(torch.utils.data.Dataset):
    """Tokenized groups (``input_ids_responses`` + ``scores``) or rated responses (``input_ids`` + ``labels``).

    Attributes:
        fmt: ``ranked``, ``ranked_lists`` or ``ratings``.
        examples: one dict per group or rated response.
    """

    def __init__(self, examples: list[dict[str, Any]], fmt: str):
        self.examples, self.fmt = examples, fmt

    @property
    def kind(self) -> str:
        """``groups`` or ``ratings``."""
        return "ratings" if self.fmt == "ratings" else "groups"

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.examples[i]

    def lengths(self) -> list[int]:
        """Tokens of each example's longest sequence (for length grouping)."""
        if self.kind == "ratings":
            return [len(e["input_ids"]) for e in self.examples]
        return [max(len(s) for s in e["input_ids_responses"]) for e in self.examples]

    def max_group_size(self) -> int:
        """Responses in the largest group (1 for ratings); computed once."""
        if not hasattr(self, "_max_group_size"):
            self._max_group_size = (max((len(e["scores"]) for e in self.examples), default=0)
                                    if self.kind == "groups" else 1)
        return self._max_group_size

    def label_statistics(self) -> tuple[list[float], list[float]]:
        """Per-attribute mean and standard deviation of the rated cells (std 1 where it is 0)."""
        return label_statistics([e["labels"] for e in self.examples])


class GroupStream(torch.utils.data.IterableDataset):
    """A streaming ``datasets.IterableDataset`` of groups or ratings, checked and tokenized as it is read.

    Yields the examples of ``GroupDataset`` (filtered rows skipped, and counted in
    ``stats`` as they go by). Sharding among data loader workers is the stream's own
    (``datasets`` splits its shards); among processes, Accelerate's.

    Attributes:
        fmt: ``ranked``, ``ranked_lists`` or ``ratings``.
        stats: the length policy's counts so far.
    """

    def __init__(self, dataset, encoder: GroupEncoder, fmt: str, name: str,
                 attributes: Sequence[str] | None = None, names: ColumnNames = ColumnNames()):
        self.dataset, self.encoder, self.fmt, self.name = dataset, encoder, fmt, name
        self.attributes, self.names = attributes, names
        self.stats = encoder.stats

    @property
    def kind(self) -> str:
        """``groups`` or ``ratings``."""
        return "ratings" if self.fmt == "ratings" else "groups"

    def set_epoch(self, epoch: int) -> None:
        """Passed on to the stream (its shuffling buffer reshuffles per epoch)."""
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self):
        for i, row in enumerate(self.dataset):
            problem = group_row_problem(row, self.fmt, self.names, self.attributes)
            if problem:
                raise BadRowError(self.name, i, *problem)
            example = self.encoder.encode_rows([row])[0]
            if example is not None:
                yield example


def label_statistics(labels) -> tuple[list[float], list[float]]:
    """Per-attribute mean and standard deviation over the rated cells of ``(rows, attributes)``
    labels (NaN = not rated); a standard deviation of 0 becomes 1."""
    labels = torch.as_tensor(labels, dtype=torch.float64)
    rated = ~torch.isnan(labels)
    counts = rated.sum(0).clamp(min=1)
    filled = torch.nan_to_num(labels)
    mean = filled.sum(0) / counts
    var = ((filled - mean) ** 2 * rated).sum(0) / counts
    std = var.sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    return mean.tolist(), std.tolist()


def _columns_and_first(dataset) -> tuple[list[str], Any]:
    if len(dataset) == 0:
        return [], None
    first = dataset[0]
    return list(getattr(dataset, "column_names", None) or first.keys()), first


def group_format_of(dataset, names: ColumnNames = ColumnNames()) -> str | None:
    """The group shape of a list of dicts or ``datasets.Dataset``, or None (pairs, or unknown)."""
    try:
        import datasets

        if isinstance(dataset, datasets.IterableDataset):
            first = next(iter(dataset), None)
            return detect_group_format(list(first or {}), first, names) if first else None
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        return None
    columns, first = _columns_and_first(dataset)
    return detect_group_format(columns, first, names) if first is not None else None


def tokenize_groups(
    dataset,
    tokenizer,
    fmt: str,
    name: str = "dataset",
    max_length: int | None = None,
    length_policy: str = "filter",
    attributes: Sequence[str] | None = None,
    names: ColumnNames = ColumnNames(),
) -> tuple[GroupDataset, LengthStats]:
    """Checks and tokenizes ranked groups or ratings in this process.

    Returns:
        ``(GroupDataset, stats)``; for a streaming ``datasets.IterableDataset``, a
        ``GroupStream`` whose stats grow as it is read.

    Raises:
        DataFormatError: ratings without their attribute columns, or every row filtered
            by the length policy.
        BadRowError: a malformed row; the message names the row and the field (for a
            stream, when it is read).
    """
    import datasets

    encoder = GroupEncoder(tokenizer, fmt, names, max_length, length_policy, attributes)
    if isinstance(dataset, datasets.IterableDataset):
        first = next(iter(dataset), None) or {}
        if fmt == "ratings":
            check_attribute_columns(list(first), attributes, name)
        return GroupStream(dataset, encoder, fmt, name, attributes, names), encoder.stats
    columns, _ = _columns_and_first(dataset)
    if fmt == "ratings":
        check_attribute_columns(columns, attributes, name)
    examples: list[dict[str, Any]] = []
    chunk = []
    for i, row in enumerate(dataset):
        problem = group_row_problem(row, fmt, names, attributes)
        if problem:
            raise BadRowError(name, i, *problem)
        chunk.append(row)
        if len(chunk) == _ENCODE_CHUNK:
            examples += [e for e in encoder.encode_rows(chunk) if e is not None]
            chunk = []
    if chunk:
        examples += [e for e in encoder.encode_rows(chunk) if e is not None]
    stats = encoder.stats
    if stats.pairs and stats.filtered == stats.pairs:
        raise DataFormatError(
            f"{name}: all {stats.pairs} rows have a sequence longer than max_length={max_length} tokens "
            f"(the longest has {stats.longest}); raise max_length or use length_policy='truncate'"
        )
    return GroupDataset(examples, fmt), stats


def nan_to_none(values: Sequence[float]) -> list[float | None]:
    """Labels for JSON and Arrow: NaN (not rated) becomes None."""
    return [None if isinstance(v, float) and math.isnan(v) else v for v in values]


__all__ = ["GroupDataset", "GroupStream", "group_format_of", "label_statistics", "tokenize_groups"]
