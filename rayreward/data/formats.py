"""Preference-pair formats: detection, row checks and tokenization.

One code path turns a row into token ids, whether the row comes from a list of dicts
handed to ``RewardTrainer`` or from a Ray Data block; the trainer and the distributed
pipeline therefore produce the same ids for the same rows.

Formats:
    implicit_prompt: ``chosen`` and ``rejected`` hold whole texts (the prompt is part
        of each, as in hh-rlhf).
    explicit_prompt: ``prompt`` + ``chosen`` + ``rejected``; the prompt is prepended.
    conversational: lists of ``{"role", "content"}`` messages (``prompt`` optional),
        rendered with the tokenizer's chat template.
        Rows may carry a ``tools`` column (a list of JSON schemas, or that list as a
        JSON string), assistant messages with ``tool_calls`` (``content`` may then be
        empty), ``tool`` messages, and a ``chat_template_kwargs`` mapping; all of it
        reaches ``tokenizer.apply_chat_template`` as TRL passes it.
    pretokenized: ``input_ids_chosen``, ``attention_mask_chosen``,
        ``input_ids_rejected``, ``attention_mask_rejected`` (the seed's layout).
    token_ids: TRL 1.x's ``chosen_ids`` and ``rejected_ids`` (no masks); its legacy
        names ``chosen_input_ids``/``rejected_input_ids`` are read with a ``FutureWarning``.

Text inputs get the tokenizer's EOS appended when they lack it, and are tokenized
with the tokenizer's special tokens, as TRL's ``RewardTrainer`` does.
"""

from __future__ import annotations

import json
import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

FORMATS = ("implicit_prompt", "explicit_prompt", "conversational", "pretokenized", "token_ids")
PRETOKENIZED_COLUMNS = (
    "input_ids_chosen",
    "attention_mask_chosen",
    "input_ids_rejected",
    "attention_mask_rejected",
)
# TRL 1.x's pre-tokenized columns, then the legacy names it still reads (with a warning).
TOKEN_IDS_COLUMNS = {"chosen": "chosen_ids", "rejected": "rejected_ids"}
LEGACY_TOKEN_IDS_COLUMNS = {"chosen": "chosen_input_ids", "rejected": "rejected_input_ids"}
# The release that stops reading the legacy names (the warning says so).
LEGACY_COLUMNS_REMOVED_IN = "0.3"
LENGTH_POLICIES = ("filter", "truncate")
# Message roles the chat templates of current models know. A role outside this set is
# almost always a data bug (a typo, a mislabelled column), which a template would
# otherwise render silently as text or drop.
MESSAGE_ROLES = ("system", "developer", "user", "assistant", "tool", "ipython", "function")


@dataclass(frozen=True)
class ColumnNames:
    """Names of the columns that hold each part of a pair."""

    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"
    margin: str = "margin"


class DataFormatError(ValueError):
    """A data set as a whole does not fit any supported format."""


class BadRowError(ValueError):
    """One row is malformed. ``source``, ``row`` and ``field`` say where."""

    def __init__(self, source: str, row: int | str, field: str | None, problem: str):
        self.source, self.row, self.field, self.problem = source, row, field, problem
        where = f"{source}, row {row}" + (f", field '{field}'" if field else "")
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):
        # Exceptions pickle their message only; a Ray worker's error must rebuild intact.
        return type(self), (self.source, self.row, self.field, self.problem)


def detect_format(
    columns: Iterable[str],
    first_row: Mapping[str, Any] | None = None,
    names: ColumnNames = ColumnNames(),
    source: str = "dataset",
) -> str:
    """Guesses the format of a data set from its columns and first row.

    Raises:
        DataFormatError: when neither the pre-tokenized columns nor the chosen and
            rejected columns are all present; the message lists what was found.
    """
    cols = set(columns)
    if all(c in cols for c in PRETOKENIZED_COLUMNS):
        return "pretokenized"
    if all(c in cols for c in TOKEN_IDS_COLUMNS.values()):
        return "token_ids"
    if all(c in cols for c in LEGACY_TOKEN_IDS_COLUMNS.values()):
        warnings.warn(
            f"{source}: the columns chosen_input_ids/rejected_input_ids are TRL's legacy names, deprecated "
            f"(as in TRL); they will stop being read in rayreward {LEGACY_COLUMNS_REMOVED_IN}; rename them to "
            "chosen_ids/rejected_ids",
            FutureWarning,
            stacklevel=2,
        )
        return "token_ids"
    missing = [c for c in (names.chosen, names.rejected) if c not in cols]
    if missing:
        partial = [c for c in PRETOKENIZED_COLUMNS if c in cols]
        hint = (
            f" Pre-tokenized data needs all of {', '.join(PRETOKENIZED_COLUMNS)}; found only {', '.join(partial)}."
            if partial
            else " If your columns have other names, map them (data.columns.chosen=..., data.columns.rejected=...)."
        )
        raise DataFormatError(
            f"{source}: missing column(s) {', '.join(repr(m) for m in missing)}; found columns "
            f"{sorted(cols)}. A preference data set needs '{names.chosen}' and '{names.rejected}' "
            f"(and optionally '{names.prompt}' and '{names.margin}').{hint}"
        )
    if first_row is not None and isinstance(first_row.get(names.chosen), (list, tuple)):
        return "conversational"
    return "explicit_prompt" if names.prompt in cols else "implicit_prompt"


def _text_problem(value: Any, allow_empty: bool = False) -> str | None:
    if not isinstance(value, str):
        return f"expected a string, got {type(value).__name__} ({_short(value)})"
    if not allow_empty and not value.strip():
        return "empty text; every chosen and rejected answer needs some text (drop or fix the row)"
    return None


def _messages_problem(value: Any, allow_empty: bool = False) -> str | None:
    if not isinstance(value, (list, tuple)):
        return f"expected a list of {{'role', 'content'}} messages, got {type(value).__name__} ({_short(value)})"
    if not value and not allow_empty:
        return "empty conversation; expected at least one {'role', 'content'} message"
    for i, m in enumerate(value):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            return f"message {i} must be a mapping with string 'role' and 'content', got {_short(m)}"
        if m["role"] not in MESSAGE_ROLES:
            return f"message {i} has role {m['role']!r}; expected one of {', '.join(MESSAGE_ROLES)}"
        calls = m.get("tool_calls")
        if calls is not None:
            calls = _as_list(calls)
            if m["role"] != "assistant" or not isinstance(calls, (list, tuple)) or not all(
                isinstance(c, Mapping) for c in calls
            ):
                return f"message {i}: tool_calls must be a list of mappings on an assistant message, got {_short(m)}"
        # An assistant turn that only calls tools may have no content (None, as Arrow stores it).
        if not isinstance(m.get("content"), str) and not (calls and m.get("content") is None):
            return (f"message {i} must be a mapping with string 'role' and 'content' (content may be empty "
                    f"on an assistant message with tool_calls), got {_short(m)}")
    last = value[-1] if value else None
    if last is not None and not allow_empty and not str(last.get("content") or "").strip() and not last.get("tool_calls"):
        return "the last message has empty content; the answer being rated needs some text"
    return None


def _tools_problem(value: Any) -> str | None:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            return f"tools is a string but not JSON ({e}); give a list of tool schemas"
    value = _as_list(value)
    if not isinstance(value, (list, tuple)) or not all(isinstance(t, Mapping) for t in value):
        return f"expected a list of tool schemas (mappings), got {_short(value)}"
    return None


def _ids_problem(ids: Any, mask: Any) -> str | None:
    if not isinstance(ids, (list, tuple)) or not all(
        isinstance(t, numbers.Integral) and not isinstance(t, (bool, np.bool_)) for t in ids
    ):
        return f"expected a list of integer token ids, got {_short(ids)}"
    if not ids:
        return "empty token list"
    if not isinstance(mask, (list, tuple)) or len(mask) != len(ids) or any(m not in (0, 1) for m in mask):
        return f"attention mask must be a list of 0/1 of the same length as the ids ({len(ids)}), got {_short(mask)}"
    return None


def margin_problem(value: Any) -> str | None:
    """Why ``value`` is not a usable margin, or None when it is a finite number."""
    # numbers.Real also admits numpy scalars (np.float32, np.int64), which Ray Data and
    # pandas hand over; bool is a Real subclass but never a meaningful margin.
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return f"margin must be a finite number, got {type(value).__name__} ({_short(value)})"
    if not math.isfinite(value):
        return f"margin must be a finite number, got {value}"
    return None


def row_problem(row: Mapping[str, Any], fmt: str, names: ColumnNames = ColumnNames()) -> tuple[str, str] | None:
    """Returns ``(field, problem)`` for the first thing wrong with ``row``, else None."""
    if fmt == "pretokenized":
        for side in ("chosen", "rejected"):
            ids_col, mask_col = f"input_ids_{side}", f"attention_mask_{side}"
            if ids_col not in row or row[ids_col] is None:
                return ids_col, "missing value"
            problem = _ids_problem(_as_list(row[ids_col]), _as_list(row.get(mask_col)))
            if problem:
                return ids_col, problem
    elif fmt == "token_ids":
        for side in ("chosen", "rejected"):
            ids_col = token_ids_column(row, side)
            if row.get(ids_col) is None:
                return ids_col, "missing value"
            ids = _as_list(row[ids_col])
            problem = _ids_problem(ids, [1] * len(ids) if isinstance(ids, (list, tuple)) else None)
            if problem:
                return ids_col, problem
    else:
        check = _messages_problem if fmt == "conversational" else _text_problem
        for col in (names.chosen, names.rejected):
            if col not in row or row[col] is None:
                return col, "missing value; every row needs a chosen and a rejected answer"
            problem = check(_as_list(row[col]) if fmt == "conversational" else row[col])
            if problem:
                return col, problem
        if fmt in ("explicit_prompt", "conversational") and names.prompt in row:
            value = row[names.prompt]
            if value is None and fmt == "conversational":
                value = []
            problem = check(_as_list(value) if fmt == "conversational" else value, allow_empty=True)
            if problem:
                return names.prompt, problem
        if fmt == "conversational":
            if row.get("tools") is not None:
                problem = _tools_problem(row["tools"])
                if problem:
                    return "tools", problem
            kwargs = row.get("chat_template_kwargs")
            if kwargs is not None and not isinstance(kwargs, Mapping):
                return "chat_template_kwargs", f"expected a mapping of apply_chat_template arguments, got {_short(kwargs)}"
    if names.margin in row:
        problem = margin_problem(row[names.margin])
        if problem:
            return names.margin, problem
    return None


def token_ids_column(row: Mapping[str, Any], side: str) -> str:
    """The column holding one side's ids in TRL's layout: ``chosen_ids``, or its legacy name."""
    name = TOKEN_IDS_COLUMNS[side]
    return name if name in row else LEGACY_TOKEN_IDS_COLUMNS[side]


def chat_template_kwargs(row: Mapping[str, Any]) -> dict[str, Any]:
    """The per-row arguments of ``apply_chat_template``: ``tools`` and ``chat_template_kwargs``."""
    kwargs: dict[str, Any] = {}
    tools = row.get("tools")
    if tools is not None:
        kwargs["tools"] = json.loads(tools) if isinstance(tools, str) else _plain(tools)
    kwargs.update(_plain(row.get("chat_template_kwargs") or {}))
    return kwargs


def _plain(value: Any) -> Any:
    """Nested lists/dicts of plain Python values (Arrow and numpy hand over arrays)."""
    value = _as_list(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _message(m: Mapping[str, Any]) -> dict[str, Any]:
    # Arrow stores a list of messages as structs with every field any message has, filling
    # the others with None (`tool_calls: None` on a plain turn); templates test whether a
    # key is defined, so absent fields must stay absent.
    return {k: _plain(v) for k, v in m.items() if v is not None}


def _as_list(value: Any) -> Any:
    # Arrow and numpy hand lists over as arrays; checks and tokenizers want lists.
    return value.tolist() if hasattr(value, "tolist") and not isinstance(value, (str, bytes)) else value


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


@dataclass
class LengthStats:
    """How many pairs the length policy touched."""

    pairs: int = 0
    filtered: int = 0
    truncated: int = 0
    longest: int = 0

    def add(self, other: "LengthStats") -> None:
        self.pairs += other.pairs
        self.filtered += other.filtered
        self.truncated += other.truncated
        self.longest = max(self.longest, other.longest)

    def describe(self, max_length: int | None, policy: str) -> str:
        if policy == "filter":
            return f"{self.filtered} of {self.pairs} pairs longer than max_length={max_length} tokens were filtered out"
        return f"{self.truncated} of {self.pairs} pairs longer than max_length={max_length} tokens were truncated"


@dataclass
class PairEncoder:
    """Turns rows of one format into token ids, applying the length policy.

    Args:
        tokenizer: a Hugging Face tokenizer.
        fmt: one of ``FORMATS``.
        names: the column names.
        max_length: longest sequence kept, in tokens; None keeps everything.
        length_policy: ``filter`` drops pairs where either side is longer than
            ``max_length``; ``truncate`` keeps the last ``max_length`` tokens (the end of
            the answer, where the reward is read), and the first token when it is a
            special token such as BOS or CLS.
    """

    tokenizer: Any
    fmt: str
    names: ColumnNames = ColumnNames()
    max_length: int | None = None
    length_policy: str = "filter"
    stats: LengthStats = field(default_factory=LengthStats)

    def __post_init__(self):
        if self.fmt not in FORMATS:
            raise ValueError(f"unknown format {self.fmt!r}; expected one of {', '.join(FORMATS)}")
        if self.length_policy not in LENGTH_POLICIES:
            raise ValueError(f"length_policy must be one of {LENGTH_POLICIES}, got {self.length_policy!r}")
        if self.fmt == "conversational" and not getattr(self.tokenizer, "chat_template", None):
            raise DataFormatError(
                f"the data is conversational (lists of messages) but the tokenizer "
                f"{type(self.tokenizer).__name__} has no chat template; set tokenizer.chat_template "
                "(or data.chat_template in a job config) or give the pairs as text"
            )
        self._special = set(getattr(self.tokenizer, "all_special_ids", []) or [])

    def encode_rows(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any] | None]:
        """Encodes rows (already checked with ``row_problem``); None marks a filtered pair."""
        chosen, rejected = self._token_ids(rows, self.names.chosen), self._token_ids(rows, self.names.rejected)
        out: list[dict[str, Any] | None] = []
        for row, c_ids, r_ids in zip(rows, chosen, rejected):
            self.stats.pairs += 1
            self.stats.longest = max(self.stats.longest, len(c_ids), len(r_ids))
            if self.max_length is not None and max(len(c_ids), len(r_ids)) > self.max_length:
                if self.length_policy == "filter":
                    self.stats.filtered += 1
                    out.append(None)
                    continue
                self.stats.truncated += 1
                c_ids, r_ids = self.truncate(c_ids), self.truncate(r_ids)
            pair = {
                "input_ids_chosen": c_ids,
                "attention_mask_chosen": [1] * len(c_ids),
                "input_ids_rejected": r_ids,
                "attention_mask_rejected": [1] * len(r_ids),
            }
            if self.names.margin in row:
                pair["margin"] = float(row[self.names.margin])
            out.append(pair)
        return out

    def encode_column(self, rows: Sequence[Mapping[str, Any]], col: str) -> list[list[int] | None]:
        """Token ids of one answer column, built as a pair side is; None marks a filtered text.

        Used to score single answers (``rayreward score``): the prompt is prepended or
        the chat template applied, EOS appended, and the length policy applied per text.
        """
        out: list[list[int] | None] = []
        for ids in self._token_ids(rows, col):
            self.stats.pairs += 1
            self.stats.longest = max(self.stats.longest, len(ids))
            if self.max_length is not None and len(ids) > self.max_length:
                if self.length_policy == "filter":
                    self.stats.filtered += 1
                    out.append(None)
                    continue
                self.stats.truncated += 1
                ids = self.truncate(ids)
            out.append(ids)
        return out

    def _token_ids(self, rows: Sequence[Mapping[str, Any]], col: str) -> list[list[int]]:
        tok = self.tokenizer
        if self.fmt == "token_ids":
            side = "chosen" if col == self.names.chosen else "rejected"
            return [[int(t) for t in _as_list(row[token_ids_column(row, side)])] for row in rows]
        if self.fmt == "pretokenized":
            side = "chosen" if col == self.names.chosen else "rejected"
            result = []
            for row in rows:
                ids = [int(t) for t in _as_list(row[f"input_ids_{side}"])]
                mask = _as_list(row[f"attention_mask_{side}"])
                # Padding inside pre-tokenized rows is dropped; the collator pads again.
                result.append([t for t, m in zip(ids, mask) if m])
            return result
        if self.fmt == "conversational":
            result = []
            for row in rows:
                messages = list(_as_list(row.get(self.names.prompt)) or []) + list(_as_list(row[col]))
                enc = tok.apply_chat_template(
                    [_message(m) for m in messages], tokenize=True, return_dict=True,
                    **{"add_generation_prompt": False, **chat_template_kwargs(row)},
                )
                result.append(list(enc["input_ids"]))
            return result
        eos = tok.eos_token
        texts = []
        for row in rows:
            text = (row.get(self.names.prompt) or "") + row[col] if self.fmt == "explicit_prompt" else row[col]
            if eos and not text.endswith(eos):
                text += eos
            texts.append(text)
        return [list(ids) for ids in tok(texts)["input_ids"]]

    def truncate(self, ids: list[int]) -> list[int]:
        """The last max_length tokens of ids (keeping a leading special token such as BOS or CLS)."""
        n = self.max_length
        if len(ids) <= n:
            return ids
        if ids[0] in self._special and n > 1:
            return ids[:1] + ids[len(ids) - (n - 1):]
        return ids[len(ids) - n:]
