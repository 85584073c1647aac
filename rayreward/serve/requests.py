"""Request bodies of the reward server: parsed and checked, no model and no Ray.

Each body becomes a ``ParsedRequest``: rows in one ``Layout`` of
``rayreward.evaluation.scorer`` (the layouts ``rayreward score`` reads), so a text
sent to the server is tokenized exactly as the same text in a scored file. A bad body
raises ``RequestError`` naming the field (``query[3]``, ``pairs[0].chosen``).

Bodies:
    ``POST /get_reward`` (OpenRLHF's remote reward model): ``{"query": [texts],
    "prompts": [...], "labels": [...]}``; each query is a whole text (prompt and
    response), as OpenRLHF sends it; ``prompts`` and ``labels`` are accepted and unused.

    ``POST /score``: exactly one of ``{"texts": [...]}``, ``{"prompts": [...],
    "responses": [...]}``, ``{"messages": [[{"role", "content"}, ...], ...]}`` or
    ``{"pairs": [{"prompt"?, "chosen", "rejected"}, ...]}`` (texts or message lists).
    Both take ``"normalize": true/false`` (default: the server's setting).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rayreward.data.formats import row_problem
from rayreward.evaluation.scorer import Layout, detect_layout

MAX_ITEMS = 4096
SCORE_KINDS = ("texts", "responses", "messages", "pairs")


class RequestError(ValueError):
    """A request the server cannot score; ``status`` is the HTTP code, ``field`` names the culprit."""

    def __init__(self, field: str | None, message: str, status: int = 422):
        self.field, self.message, self.status = field, message, status
        super().__init__(f"{field}: {message}" if field else message)

    def body(self) -> dict[str, Any]:
        return {"error": str(self), "field": self.field}


@dataclass
class ParsedRequest:
    """What to score.

    Attributes:
        layout: how ``rows`` are read (single answers or pairs, and their format).
        rows: one mapping per item, in the layout's columns.
        fields: how errors name each row (``texts[2]``), by position.
        normalize: None (the server's default), True or False.
    """

    layout: Layout
    rows: list[dict[str, Any]]
    fields: list[str]
    normalize: bool | None = None
    attributes: bool = True  # a multi-attribute model's attributes in the answer (not for /get_reward)

    @property
    def pairs(self) -> bool:
        return self.layout.kind == "pairs"


def parse_json(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request body.

    Raises:
        RequestError: (400) not JSON, or not an object.
    """
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError("body", f"not valid JSON ({exc})", 400) from None
    if not isinstance(body, dict):
        raise RequestError("body", f"expected a JSON object, got {type(body).__name__}", 400)
    return body


def parse_get_reward(body: dict[str, Any]) -> ParsedRequest:
    """An OpenRLHF ``/get_reward`` body."""
    unknown = set(body) - {"query", "prompts", "labels", "normalize"}
    if unknown:
        raise RequestError(sorted(unknown)[0], "unknown field; expected query (and optionally prompts, labels, "
                                               "normalize)")
    texts = _list(body, "query", str)
    layout = detect_layout(["text"], {"text": texts[0]})
    request = _checked(layout, [{"text": t} for t in texts], [f"query[{i}]" for i in range(len(texts))],
                       _normalize(body))
    request.attributes = False  # OpenRLHF reads one reward per query: the combined one
    return request


def parse_score(body: dict[str, Any]) -> ParsedRequest:
    """A typed ``/score`` body (see the module docstring)."""
    given = [k for k in SCORE_KINDS if k in body]
    unknown = set(body) - set(SCORE_KINDS) - {"prompts", "normalize"}
    if unknown:
        raise RequestError(sorted(unknown)[0], f"unknown field; expected one of {', '.join(SCORE_KINDS)} "
                                               "(with prompts for responses) and optionally normalize")
    if len(given) != 1:
        raise RequestError("body", f"expected exactly one of {', '.join(SCORE_KINDS)}; got "
                                   f"{', '.join(given) if given else 'none'}")
    kind, normalize = given[0], _normalize(body)
    if "prompts" in body and kind != "responses":
        raise RequestError("prompts", f"goes with responses; with {kind} put the prompt in each item")
    if kind == "texts":
        texts = _list(body, "texts", str)
        rows, layout = [{"text": t} for t in texts], detect_layout(["text"], {"text": texts[0]})
    elif kind == "responses":
        responses = _list(body, "responses", str)
        prompts = _list(body, "prompts", str, allow_empty_text=True)
        if len(prompts) != len(responses):
            raise RequestError("prompts", f"got {len(prompts)} prompts for {len(responses)} responses; expected "
                                          "one prompt per response")
        rows = [{"prompt": p, "response": r} for p, r in zip(prompts, responses)]
        layout = detect_layout(["prompt", "response"], rows[0])
    elif kind == "messages":
        conversations = _list(body, "messages", list)
        rows = [{"messages": m} for m in conversations]
        layout = detect_layout(["messages"], rows[0])
    else:
        items = _list(body, "pairs", dict)
        keys = set(items[0])
        for i, item in enumerate(items):
            extra = set(item) - {"prompt", "chosen", "rejected"}
            if extra:
                raise RequestError(f"pairs[{i}].{sorted(extra)[0]}", "unknown field; a pair has chosen, rejected "
                                                                     "and optionally prompt")
            if set(item) != keys:
                raise RequestError(f"pairs[{i}]", f"has fields {sorted(item)}; expected the same fields as "
                                                  f"pairs[0] ({sorted(keys)})")
        for side in ("chosen", "rejected"):
            if side not in keys:
                raise RequestError(f"pairs[0].{side}", "missing; every pair needs chosen and rejected")
        rows, layout = items, detect_layout(sorted(keys), items[0])
    return _checked(layout, rows, [f"{kind}[{i}]" for i in range(len(rows))], normalize)


def _list(body: dict[str, Any], key: str, item_type: type, allow_empty_text: bool = False) -> list:
    if key not in body:
        raise RequestError(key, "missing field")
    value = body[key]
    if not isinstance(value, list):
        raise RequestError(key, f"expected a list, got {type(value).__name__}")
    if not value:
        raise RequestError(key, "empty list; expected at least one item")
    if len(value) > MAX_ITEMS:
        raise RequestError(key, f"{len(value)} items; at most {MAX_ITEMS} per request (split the request)", 413)
    for i, item in enumerate(value):
        if not isinstance(item, item_type):
            want = {str: "a string", list: "a list of messages", dict: "an object"}[item_type]
            raise RequestError(f"{key}[{i}]", f"expected {want}, got {type(item).__name__}")
        if item_type is str and not allow_empty_text and not item.strip():
            raise RequestError(f"{key}[{i}]", "empty text")
    return value


def _normalize(body: dict[str, Any]) -> bool | None:
    value = body.get("normalize")
    if value is not None and not isinstance(value, bool):
        raise RequestError("normalize", f"expected true or false, got {value!r}")
    return value


def _checked(layout: Layout, rows: list[dict[str, Any]], fields: list[str], normalize: bool | None) -> ParsedRequest:
    # The row checks of `rayreward score` (formats.row_problem), so the server rejects
    # what the offline scorer rejects.
    for row, where in zip(rows, fields):
        problem = row_problem(row, layout.fmt, layout.names)
        if problem:
            column, text = problem
            text = text.replace("every chosen and rejected answer", "every answer").replace(
                "every row needs a chosen and a rejected answer", "every item needs one")
            if layout.kind == "pairs":
                where = f"{where}.{column}"
            elif column == layout.names.prompt:
                where = where.replace("responses[", "prompts[")
            raise RequestError(where, text)
    return ParsedRequest(layout, rows, fields, normalize)
