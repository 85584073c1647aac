"""Format detection, row checks and tokenization of pairs (the path the trainer and the
Ray Data pipeline share)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from datasets import Dataset

from rayreward import BadRowError

from rayreward import DataFormatError
from rayreward.data.formats import PairEncoder, detect_format, margin_problem, row_problem
from rayreward.core.trainer import tokenize_pairs

PROMPT = "Human: How do I boil an egg?\nAssistant:"
GOOD = " Put it in boiling water for eight minutes, then cool it in cold water."
BAD = " Figure it out yourself."


def test_detect_format():
    assert detect_format(["chosen", "rejected"]) == "implicit_prompt"
    assert detect_format(["prompt", "chosen", "rejected", "margin"]) == "explicit_prompt"
    assert detect_format(["chosen", "rejected"], {"chosen": [{"role": "user", "content": "x"}]}) == "conversational"
    cols = ["input_ids_chosen", "attention_mask_chosen", "input_ids_rejected", "attention_mask_rejected"]
    assert detect_format(cols) == "pretokenized"


def test_missing_rejected_column_names_it_and_what_is_expected():
    with pytest.raises(DataFormatError) as err:
        detect_format(["prompt", "chosen"], source="train.jsonl")
    text = str(err.value)
    assert "train.jsonl" in text and "missing column(s) 'rejected'" in text
    assert "needs 'chosen' and 'rejected'" in text


def test_partial_pretokenized_columns_are_explained():
    with pytest.raises(DataFormatError, match="Pre-tokenized data needs all of"):
        detect_format(["input_ids_chosen", "attention_mask_chosen"])


def test_eos_is_appended_once(tokenizer):
    eos = tokenizer.eos_token_id
    enc = PairEncoder(tokenizer, "implicit_prompt")
    plain, already = enc.encode_rows(
        [{"chosen": "Hello there", "rejected": "Go away"}, {"chosen": "Hello there</s>", "rejected": "Go away</s>"}]
    )
    assert plain["input_ids_chosen"][-1] == eos
    assert plain["input_ids_chosen"].count(eos) == 1
    assert plain == already  # text that already ends with EOS is left alone
    assert plain["input_ids_chosen"][0] == tokenizer.bos_token_id
    assert plain["attention_mask_chosen"] == [1] * len(plain["input_ids_chosen"])


def test_explicit_prompt_equals_implicit_prompt(tokenizer):
    explicit = PairEncoder(tokenizer, "explicit_prompt").encode_rows(
        [{"prompt": PROMPT, "chosen": GOOD, "rejected": BAD, "margin": 1}]
    )[0]
    implicit = PairEncoder(tokenizer, "implicit_prompt").encode_rows(
        [{"chosen": PROMPT + GOOD, "rejected": PROMPT + BAD, "margin": 1}]
    )[0]
    assert explicit == implicit
    assert explicit["margin"] == 1.0 and isinstance(explicit["margin"], float)


def test_conversational_pairs_use_the_chat_template(tokenizer):
    prompt = [{"role": "user", "content": "How do I boil an egg?"}]
    chosen = [{"role": "assistant", "content": GOOD.strip()}]
    rejected = [{"role": "assistant", "content": BAD.strip()}]
    pair = PairEncoder(tokenizer, "conversational").encode_rows(
        [{"prompt": prompt, "chosen": chosen, "rejected": rejected}]
    )[0]
    rendered = tokenizer.apply_chat_template(prompt + chosen, tokenize=False)
    assert "<|user|>" in rendered and "<|assistant|>" in rendered
    expected = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert pair["input_ids_chosen"] == expected
    # like a text pair: BOS first, exactly one EOS per turn and one at the end
    assert pair["input_ids_chosen"][0] == tokenizer.bos_token_id
    assert pair["input_ids_chosen"][-1] == tokenizer.eos_token_id
    assert pair["input_ids_rejected"].count(tokenizer.eos_token_id) == 2
    # without a separate prompt column the whole conversation is in chosen/rejected
    whole = PairEncoder(tokenizer, "conversational").encode_rows(
        [{"chosen": prompt + chosen, "rejected": prompt + rejected}]
    )[0]
    assert whole == pair


def test_conversational_needs_a_chat_template(tokenizer):
    tokenizer.chat_template = None
    with pytest.raises(DataFormatError, match="no chat template"):
        PairEncoder(tokenizer, "conversational")


def test_filter_and_truncate_are_counted(tokenizer):
    rows = [{"chosen": PROMPT + GOOD, "rejected": PROMPT + BAD}, {"chosen": "Yes.", "rejected": "No."}]
    long_len = len(PairEncoder(tokenizer, "implicit_prompt").encode_rows(rows[:1])[0]["input_ids_chosen"])
    filt = PairEncoder(tokenizer, "implicit_prompt", max_length=10)
    out = filt.encode_rows(rows)
    assert out[0] is None and out[1] is not None
    assert (filt.stats.pairs, filt.stats.filtered, filt.stats.truncated, filt.stats.longest) == (2, 1, 0, long_len)
    assert "1 of 2 pairs" in filt.stats.describe(10, "filter")

    trunc = PairEncoder(tokenizer, "implicit_prompt", max_length=10, length_policy="truncate")
    out = trunc.encode_rows(rows)
    full = PairEncoder(tokenizer, "implicit_prompt").encode_rows(rows[:1])[0]["input_ids_chosen"]
    ids = out[0]["input_ids_chosen"]
    # BOS kept, then the end of the text (where the reward is read), EOS last
    assert len(ids) == 10 and ids == full[:1] + full[-9:]
    assert ids[-1] == tokenizer.eos_token_id
    assert out[0]["attention_mask_chosen"] == [1] * 10
    assert out[1] == PairEncoder(tokenizer, "implicit_prompt").encode_rows(rows[1:])[0]
    assert (trunc.stats.truncated, trunc.stats.filtered) == (1, 0)


@pytest.mark.parametrize(
    "row, field, expected",
    [
        ({"chosen": "ok", "rejected": "  "}, "rejected", "empty text"),
        ({"chosen": 5, "rejected": "ok"}, "chosen", "expected a string, got int"),
        ({"chosen": "ok", "rejected": "ok", "margin": "big"}, "margin", "margin must be a finite number, got str"),
        ({"chosen": "ok", "rejected": "ok", "margin": float("nan")}, "margin", "margin must be a finite number, got nan"),
        ({"chosen": "ok", "rejected": None}, "rejected", "missing value"),
    ],
)
def test_row_problems(row, field, expected):
    got_field, problem = row_problem(row, "implicit_prompt")
    assert got_field == field and expected in problem


def test_numpy_margins_are_numbers():
    # Ray Data and pandas hand numbers over as numpy scalars
    for value in (np.float32(0.5), np.int64(2), np.float64(1.0), 3, 0.25):
        assert margin_problem(value) is None, value
    assert margin_problem(True) is not None
    assert margin_problem(np.float32("inf")) is not None


@pytest.mark.parametrize("as_dataset", [False, True])
@pytest.mark.parametrize(
    "bad_row, row_text, expected",
    [
        ({"chosen": "", "rejected": "fine"}, "row 1, field 'chosen'", "empty text"),
        ({"chosen": "fine", "rejected": "fine", "margin": math.nan}, "row 1, field 'margin'", "finite number"),
    ],
)
def test_bad_rows_name_the_row_and_field(tokenizer, as_dataset, bad_row, row_text, expected):
    good = {"chosen": "fine", "rejected": "bad", "margin": 1.0}
    rows = [good, {**{"margin": 0.0}, **bad_row}, good]
    data = Dataset.from_list(rows) if as_dataset else rows
    with pytest.raises(BadRowError) as err:
        tokenize_pairs(data, tokenizer, name="train_dataset")
    assert f"train_dataset, {row_text}" in str(err.value) and expected in str(err.value)
    assert err.value.row == 1


def test_non_string_text_and_non_numeric_margin_in_a_list(tokenizer):
    rows = [{"chosen": "a", "rejected": "b", "margin": 1}, {"chosen": "a", "rejected": ["b"], "margin": 1}]
    with pytest.raises(BadRowError, match=r"row 1, field 'rejected': expected a string, got list"):
        tokenize_pairs(rows, tokenizer, name="train_dataset")
    rows[1] = {"chosen": "a", "rejected": "b", "margin": "1.5"}
    with pytest.raises(BadRowError, match=r"row 1, field 'margin': margin must be a finite number, got str"):
        tokenize_pairs(rows, tokenizer, name="train_dataset")


def test_malformed_message(tokenizer):
    ok = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    rows = [
        {"chosen": ok, "rejected": ok},
        {"chosen": ok, "rejected": [{"role": "user", "text": "hi"}]},
    ]
    with pytest.raises(BadRowError) as err:
        tokenize_pairs(rows, tokenizer, name="eval_dataset")
    text = str(err.value)
    assert "eval_dataset, row 1, field 'rejected'" in text
    assert "message 0 must be a mapping with string 'role' and 'content'" in text


def test_rows_must_agree_on_columns(tokenizer):
    rows = [{"chosen": "a", "rejected": "b"}, {"chosen": "a", "rejected": "b", "margin": 1.0}]
    with pytest.raises(BadRowError, match=r"row 1, field 'margin'.*first row"):
        tokenize_pairs(rows, tokenizer, name="train_dataset")
    rows = [{"chosen": "a", "rejected": "b", "margin": 1.0}, {"chosen": "a", "rejected": "b"}]
    with pytest.raises(BadRowError, match=r"row 1, field 'margin'.*first row"):
        tokenize_pairs(rows, tokenizer, name="train_dataset")


def test_all_pairs_filtered_is_an_error(tokenizer):
    with pytest.raises(DataFormatError, match="all 1 pairs are longer than max_length=2"):
        tokenize_pairs([{"chosen": PROMPT + GOOD, "rejected": BAD}], tokenizer, max_length=2)


def test_empty_dataset_is_an_error(tokenizer):
    with pytest.raises(DataFormatError, match="empty"):
        tokenize_pairs([], tokenizer, name="train_dataset")
