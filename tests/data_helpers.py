"""Real hh-rlhf pairs converted to every input format, for the data-pipeline tests."""

from __future__ import annotations

import json
import re
from pathlib import Path

_TURN = re.compile(r"\n\n(Human|Assistant): ")


def split_prompt(row: dict) -> dict | None:
    """implicit -> explicit: the prompt is the text up to the last 'Assistant:' turn."""
    cut = row["chosen"].rfind("\n\nAssistant:") + len("\n\nAssistant:")
    prompt = row["chosen"][:cut]
    if cut <= 12 or not row["rejected"].startswith(prompt):
        return None
    chosen, rejected = row["chosen"][cut:], row["rejected"][cut:]
    if not chosen.strip() or not rejected.strip():
        return None
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def to_messages(text: str) -> list[dict]:
    parts = _TURN.split(text)
    return [
        {"role": "user" if who == "Human" else "assistant", "content": content.strip()}
        for who, content in zip(parts[1::2], parts[2::2])
    ]


def conversational(row: dict) -> dict | None:
    explicit = split_prompt(row)
    if explicit is None:
        return None
    prompt = to_messages(explicit["prompt"].removesuffix("\n\nAssistant:"))
    out = {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": explicit["chosen"].strip()}],
        "rejected": [{"role": "assistant", "content": explicit["rejected"].strip()}],
    }
    if not prompt or not out["chosen"][0]["content"] or not out["rejected"][0]["content"]:
        return None
    return out


def pretokenized(row: dict, tokenizer) -> dict:
    out = {}
    for side in ("chosen", "rejected"):
        ids = tokenizer(row[side] + tokenizer.eos_token)["input_ids"]
        out[f"input_ids_{side}"] = ids
        out[f"attention_mask_{side}"] = [1] * len(ids)
    return out


def convert(rows: list[dict], fmt: str, tokenizer=None) -> list[dict]:
    if fmt == "implicit_prompt":
        return [{"chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]
    if fmt == "explicit_prompt":
        out = [split_prompt(r) for r in rows]
        # A margin derived from the row, so it is carried through and checkable.
        return [dict(r, margin=float(i % 3) / 2) for i, r in enumerate(x for x in out if x)]
    if fmt == "conversational":
        return [c for c in map(conversational, rows) if c]
    if fmt == "pretokenized":
        return [pretokenized(r, tokenizer) for r in rows]
    if fmt == "token_ids":  # TRL 1.x's layout: ids only, no masks
        return [{f"{side}_ids": p[f"input_ids_{side}"] for side in ("chosen", "rejected")}
                for p in (pretokenized(r, tokenizer) for r in rows)]
    raise ValueError(fmt)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def pair_key(pair) -> tuple:
    """A hashable view of a tokenized pair (ids only, and the margin if any)."""
    c, r = pair["input_ids_chosen"], pair["input_ids_rejected"]
    key = (tuple(int(t) for t in c), tuple(int(t) for t in r))
    if "margin" in pair and pair["margin"] is not None:
        key += (round(float(pair["margin"]), 5),)
    return key


def expected_keys(rows, tokenizer, fmt, max_length=1024, length_policy="filter") -> list[tuple]:
    from rayreward.core.trainer import tokenize_pairs

    pairs, _ = tokenize_pairs(rows, tokenizer, "expected", max_length, length_policy, fmt=fmt)
    return sorted(pair_key(p) for p in pairs)


def dataset_keys(ds) -> list[tuple]:
    return sorted(pair_key(row) for row in ds.iter_rows())
