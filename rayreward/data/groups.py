"""Beyond pairs: rankings of K responses, chosen/rejected lists and ratings.

Three shapes, detected from a data set's columns like the pair formats of
``rayreward.data.formats``:

ranked
    ``prompt`` (optional) + ``responses`` (a list of K >= 2 texts or message lists) and
    either ``ranking`` (a permutation of ``0..K-1``, best first: ``[2, 0, 1]`` says
    response 2 is best) or ``scores`` (one number per response, higher is better; equal
    numbers are ties). K may vary from row to row.
ranked_lists
    ``prompt`` (optional) + ``chosen`` and ``rejected`` as lists (RewardBench 2's
    shape): every chosen response beats every rejected one; nothing is said within a
    list (they are ties).
ratings
    ``prompt`` (optional) + ``response`` + one numeric column per attribute (the names
    come from the config, ``RewardConfig.attributes``). A missing value (absent, None or
    NaN) means "not rated", never 0; a row must rate at least one attribute.

A ranked row becomes a *group*: the token ids of each ``prompt + response`` (built
exactly as one side of a pair is, by ``PairEncoder``) and one score per response
(``ranking`` turns into ``K - position``, so ties exist only where ``scores`` say so;
a list row gets 1 for chosen and 0 for rejected). A ratings row becomes one sequence
with a label per attribute (NaN where not rated).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from rayreward.data.formats import (
    ColumnNames,
    DataFormatError,
    LengthStats,
    PairEncoder,
    _as_list,
    _messages_problem,
    _short,
    _text_problem,
)

GROUP_FORMATS = ("ranked", "ranked_lists", "ratings")
RESPONSES, RANKING, SCORES, RESPONSE = "responses", "ranking", "scores", "response"


def detect_group_format(columns, first_row: Mapping[str, Any] | None, names: ColumnNames = ColumnNames()) -> str | None:
    """The group shape of a data set, or None when it is not one (pairs, or nothing known)."""
    cols = set(columns)
    if RESPONSES in cols:
        return "ranked"
    if RESPONSE in cols and names.chosen not in cols:
        return "ratings"
    if first_row is not None and names.chosen in cols and names.rejected in cols:
        chosen = _as_list(first_row.get(names.chosen))
        # A list of texts, or a list of conversations; a list of message dicts is one
        # conversational answer (a pair).
        if isinstance(chosen, (list, tuple)) and chosen and isinstance(_as_list(chosen[0]), (str, list, tuple)):
            return "ranked_lists"
    return None


def is_conversational_group(row: Mapping[str, Any], fmt: str, names: ColumnNames = ColumnNames()) -> bool:
    """Whether a group row's responses are message lists (rendered with the chat template)."""
    if fmt == "ratings":
        return isinstance(_as_list(row.get(RESPONSE)), (list, tuple))
    col = RESPONSES if fmt == "ranked" else names.chosen
    items = _as_list(row.get(col))
    return bool(items) and isinstance(_as_list(items[0]), (list, tuple))


def check_attribute_columns(columns, attributes: Sequence[str] | None, source: str) -> None:
    """A ratings data set must have a column for every configured attribute.

    Raises:
        DataFormatError: no attributes configured, or one has no column.
    """
    cols = set(columns)
    if not attributes:
        numeric = sorted(c for c in cols if c not in ("prompt", RESPONSE))
        raise DataFormatError(
            f"{source}: ratings data ('{RESPONSE}' column) needs the names of the rated attributes; set "
            f"attributes (RewardConfig(attributes=[...]) or train.attributes=[...]); other columns found: {numeric}"
        )
    missing = [a for a in attributes if a not in cols]
    if missing:
        raise DataFormatError(
            f"{source}: attribute column(s) {', '.join(repr(m) for m in missing)} named in attributes are not in "
            f"the data; found columns {sorted(cols)}. Rename the columns or fix attributes."
        )


def _number_problem(value: Any, what: str) -> str | None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return f"{what} must be a number, got {type(value).__name__} ({_short(value)})"
    if not math.isfinite(value):
        return f"{what} must be a finite number, got {value}"
    return None


def is_missing(value: Any) -> bool:
    """Whether a rating cell means "not rated": None or NaN (Arrow and pandas write NaN for null)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _answers_problem(items: Any, conversational: bool, what: str, minimum: int) -> str | None:
    if not isinstance(items, (list, tuple)):
        return f"expected a list of {what}, got {type(items).__name__} ({_short(items)})"
    if len(items) < minimum:
        need = "at least 2 responses to rank (K = 1 ranks nothing)" if minimum == 2 else "at least one response"
        return f"got {len(items)} response(s); expected {need}"
    check = _messages_problem if conversational else _text_problem
    for i, item in enumerate(items):
        problem = check(_as_list(item))
        if problem:
            return f"response {i}: {problem}"
    return None


def group_row_problem(
    row: Mapping[str, Any], fmt: str, names: ColumnNames = ColumnNames(), attributes: Sequence[str] | None = None,
) -> tuple[str, str] | None:
    """Returns ``(field, problem)`` for the first thing wrong with a group row, else None."""
    conversational = is_conversational_group(row, fmt, names)
    if names.prompt in row and row[names.prompt] is not None:
        prompt = _as_list(row[names.prompt])
        problem = (_messages_problem if conversational else _text_problem)(prompt, allow_empty=True)
        if problem:
            return names.prompt, problem
    if fmt == "ranked":
        responses = _as_list(row.get(RESPONSES))
        if responses is None:
            return RESPONSES, "missing value; every row needs its list of responses"
        problem = _answers_problem(responses, conversational, "responses (texts or message lists)", 2)
        if problem:
            return RESPONSES, problem
        k = len(responses)
        ranking, scores = _as_list(row.get(RANKING)), _as_list(row.get(SCORES))
        if ranking is not None and scores is not None:
            return RANKING, "the row has both 'ranking' and 'scores'; give one of them"
        if ranking is None and scores is None:
            return RANKING, "missing; a ranked row needs 'ranking' (best first) or 'scores' (higher is better)"
        if ranking is not None:
            if not isinstance(ranking, (list, tuple)) or not all(
                isinstance(r, numbers.Integral) and not isinstance(r, (bool, np.bool_)) for r in ranking
            ):
                return RANKING, f"expected a list of response indices (0-based, best first), got {_short(ranking)}"
            if len(ranking) != k:
                return RANKING, f"has {len(ranking)} entries for {k} responses; expected one per response"
            if sorted(int(r) for r in ranking) != list(range(k)):
                return RANKING, f"{_short(ranking)} is not a permutation of 0..{k - 1} (0-based indices, best first)"
        else:
            if not isinstance(scores, (list, tuple)):
                return SCORES, f"expected a list of numbers (one per response), got {_short(scores)}"
            if len(scores) != k:
                return SCORES, f"has {len(scores)} entries for {k} responses; expected one per response"
            for i, s in enumerate(scores):
                problem = _number_problem(s, f"score {i}")
                if problem:
                    return SCORES, problem
            if len(set(float(s) for s in scores)) == 1:
                return SCORES, "every response has the same score: the row prefers nothing (drop it)"
    elif fmt == "ranked_lists":
        for col in (names.chosen, names.rejected):
            items = _as_list(row.get(col))
            if items is None:
                return col, "missing value; every row needs a chosen and a rejected list"
            problem = _answers_problem(items, conversational, "answers (texts or message lists)", 1)
            if problem:
                return col, problem
    elif fmt == "ratings":
        response = _as_list(row.get(RESPONSE))
        if response is None:
            return RESPONSE, "missing value; every row needs the rated response"
        problem = (_messages_problem if conversational else _text_problem)(response)
        if problem:
            return RESPONSE, problem
        rated = 0
        for name in attributes or ():
            value = row.get(name)
            if is_missing(value):
                continue
            problem = _number_problem(value, f"rating '{name}'")
            if problem:
                return name, problem
            rated += 1
        if not rated:
            return (attributes or [RESPONSE])[0], (
                f"no attribute rated (all of {', '.join(attributes or [])} missing); the row teaches nothing (drop it)"
            )
    else:
        raise ValueError(f"unknown group format {fmt!r}; expected one of {', '.join(GROUP_FORMATS)}")
    return None


def group_scores(row: Mapping[str, Any], fmt: str, names: ColumnNames = ColumnNames()) -> list[float]:
    """One score per response of a checked ranked row, higher is better (ties are equal)."""
    if fmt == "ranked_lists":
        return [1.0] * len(_as_list(row[names.chosen])) + [0.0] * len(_as_list(row[names.rejected]))
    ranking = _as_list(row.get(RANKING))
    if ranking is None:
        return [float(s) for s in _as_list(row[SCORES])]
    k = len(ranking)
    scores = [0.0] * k
    for place, index in enumerate(ranking):
        scores[int(index)] = float(k - place)
    return scores


def group_responses(row: Mapping[str, Any], fmt: str, names: ColumnNames = ColumnNames()) -> list[Any]:
    """The responses of a ranked row, in the order of ``group_scores``."""
    if fmt == "ranked_lists":
        return list(_as_list(row[names.chosen])) + list(_as_list(row[names.rejected]))
    return list(_as_list(row[RESPONSES]))


@dataclass
class GroupEncoder:
    """Turns checked group rows into token ids, with the length policy of pairs.

    Each ``prompt + response`` is tokenized by a ``PairEncoder`` exactly as one side of
    a pair is (prompt prepended or chat template applied, EOS appended), so a K = 2
    ranking has the ids of the equivalent pair.

    Args:
        tokenizer: a Hugging Face tokenizer.
        fmt: one of ``GROUP_FORMATS``.
        names: the column names.
        max_length: longest sequence kept, in tokens; None keeps everything.
        length_policy: ``filter`` drops a group (or rated row) with any sequence longer
            than ``max_length``, as a pair is dropped when either side is; ``truncate``
            keeps the last ``max_length`` tokens of each.
        attributes: the rated attributes (``ratings`` only).
    """

    tokenizer: Any
    fmt: str
    names: ColumnNames = ColumnNames()
    max_length: int | None = None
    length_policy: str = "filter"
    attributes: Sequence[str] | None = None
    stats: LengthStats = field(default_factory=LengthStats)

    def __post_init__(self):
        if self.fmt not in GROUP_FORMATS:
            raise ValueError(f"unknown group format {self.fmt!r}; expected one of {', '.join(GROUP_FORMATS)}")
        self._encoders: dict[str, PairEncoder] = {}

    def _encoder(self, conversational: bool) -> PairEncoder:
        kind = "conversational" if conversational else "explicit_prompt"
        if kind not in self._encoders:
            self._encoders[kind] = PairEncoder(self.tokenizer, kind, self.names, None, self.length_policy)
        return self._encoders[kind]

    def _sequences(self, row: Mapping[str, Any], answers: Sequence[Any]) -> list[list[int]]:
        conversational = is_conversational_group(row, self.fmt, self.names)
        prompt = row.get(self.names.prompt)
        if prompt is None:
            prompt = [] if conversational else ""
        side = self.names.chosen
        rows = [{self.names.prompt: prompt, side: _as_list(a)} for a in answers]
        return self._encoder(conversational).encode_column(rows, side)

    def encode_rows(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any] | None]:
        """Encodes checked rows; None marks a filtered row.

        Returns:
            For ranked shapes ``{"input_ids_responses": [[ids], ...], "scores": [...]}``;
            for ratings ``{"input_ids": [ids], "labels": [one per attribute, NaN = not rated]}``.
        """
        out: list[dict[str, Any] | None] = []
        for row in rows:
            if self.fmt == "ratings":
                seqs = self._sequences(row, [row[RESPONSE]])
            else:
                seqs = self._sequences(row, group_responses(row, self.fmt, self.names))
            longest = max(len(s) for s in seqs)
            self.stats.pairs += 1
            self.stats.longest = max(self.stats.longest, longest)
            if self.max_length is not None and longest > self.max_length:
                if self.length_policy == "filter":
                    self.stats.filtered += 1
                    out.append(None)
                    continue
                self.stats.truncated += 1
                seqs = [self._truncator().truncate(s) for s in seqs]
            if self.fmt == "ratings":
                labels = [float("nan") if is_missing(row.get(a)) else float(row[a]) for a in self.attributes or ()]
                out.append({"input_ids": seqs[0], "labels": labels})
            else:
                out.append({"input_ids_responses": seqs, "scores": group_scores(row, self.fmt, self.names)})
        return out

    def _truncator(self) -> PairEncoder:
        if "_truncate" not in self._encoders:
            self._encoders["_truncate"] = PairEncoder(self.tokenizer, "explicit_prompt", self.names,
                                                      self.max_length, "truncate")
        return self._encoders["_truncate"]


__all__ = [
    "GROUP_FORMATS",
    "GroupEncoder",
    "check_attribute_columns",
    "detect_group_format",
    "group_row_problem",
    "group_scores",
]
