"""``rayreward score``: rewards equal the model's own forward pass; normalization stats."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from rayreward.data.formats import BadRowError, DataFormatError
from rayreward.evaluation.normalization import (
    MEAN_KEY,
    STD_KEY,
    RewardNormalization,
    load_normalization,
    save_normalization,
)
from rayreward.evaluation.scorer import (
    TOKENS_COLUMN,
    TRUNCATED_COLUMN,
    RewardScorer,
    detect_layout,
    resolve_model_dir,
)

PAIRS = [
    {"prompt": "Human: How do I boil an egg?\nAssistant:", "chosen": " Put it in boiling water for nine minutes.",
     "rejected": " No.", "id": 0},
    {"prompt": "Human: Any tips for sleep?\nAssistant:", "chosen": " Keep a regular bedtime and a dark room.",
     "rejected": " Figure it out yourself, it is not hard at all and I do not care.", "id": 1},
    {"prompt": "Human: Hi\nAssistant:", "chosen": " Hello! How can I help?", "rejected": " What.", "id": 2},
]
CONVERSATIONS = [
    [{"role": "user", "content": "How do I boil an egg?"}, {"role": "assistant", "content": "Nine minutes in boiling water."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help you today?"}],
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random Llama reward model saved as a user would have it."""
    from rayreward.core import tiny
    from rayreward.data.tokenizer import builtin_tokenizer

    tok = builtin_tokenizer()
    model = tiny.build_model("tiny-llama", tok, hidden_size=32, num_layers=2, seed=3)
    path = tmp_path_factory.mktemp("score-model")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reference(model_dir):
    """The saved model and tokenizer, run one text at a time (no padding, no batching)."""
    from rayreward.core.model import load_reward_model
    from rayreward.data.tokenizer import load_tokenizer

    tok, model = load_tokenizer(str(model_dir)), load_reward_model(str(model_dir)).eval()

    def text_reward(text: str) -> float:
        return ids_reward(tok(text + tok.eos_token)["input_ids"])

    def chat_reward(messages) -> float:
        return ids_reward(list(tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]))

    def ids_reward(ids) -> float:
        with torch.no_grad():
            return model(input_ids=torch.tensor([ids])).logits[0, 0].item()

    return text_reward, chat_reward, ids_reward, tok


# -- layout detection ----------------------------------------------------------------


@pytest.mark.parametrize(
    "row, kind, fmt, answer",
    [
        ({"chosen": "a", "rejected": "b"}, "pairs", "implicit_prompt", "chosen"),
        ({"prompt": "p", "chosen": "a", "rejected": "b"}, "pairs", "explicit_prompt", "chosen"),
        ({"text": "a"}, "single", "implicit_prompt", "text"),
        ({"prompt": "p", "response": "a"}, "single", "explicit_prompt", "response"),
        ({"prompt": "p", "completion": "a"}, "single", "explicit_prompt", "completion"),
        ({"messages": CONVERSATIONS[0]}, "single", "conversational", "messages"),
    ],
)
def test_detect_layout(row, kind, fmt, answer):
    layout = detect_layout(list(row), row)
    assert (layout.kind, layout.fmt, layout.names.chosen) == (kind, fmt, answer)


def test_detect_layout_names_what_is_missing():
    with pytest.raises(DataFormatError, match=r"found columns \['question'\].*--text-column"):
        detect_layout(["question"], {"question": "x"}, source="q.jsonl")
    assert detect_layout(["question"], {"question": "x"}, text_column="question").names.chosen == "question"


# -- the scorer equals the model's own forward pass ----------------------------------


def test_pairs_equal_forward_pass(model_dir, reference):
    text_reward, _, _, _ = reference
    layout = detect_layout(list(PAIRS[0]), PAIRS[0])
    # A budget of 40 tokens forces several forward batches of mixed lengths.
    scorer = RewardScorer(model_dir, layout, batch_tokens=40, with_lengths=True)
    out = scorer(pa.Table.from_pylist(PAIRS))
    assert out.column_names == ["prompt", "chosen", "rejected", "id", "reward_chosen", "reward_rejected",
                                TOKENS_COLUMN, TRUNCATED_COLUMN]
    for row, got in zip(PAIRS, out.to_pylist()):
        assert got["id"] == row["id"]
        assert got["reward_chosen"] == pytest.approx(text_reward(row["prompt"] + row["chosen"]), abs=1e-5)
        assert got["reward_rejected"] == pytest.approx(text_reward(row["prompt"] + row["rejected"]), abs=1e-5)
        assert got[TRUNCATED_COLUMN] is False


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_single_texts_equal_forward_pass(model_dir, reference, padding_side):
    text_reward, _, _, tok = reference
    rows = [{"text": r["prompt"] + r["chosen"]} for r in PAIRS] + [{"text": "Short."}]
    scorer = RewardScorer(model_dir, detect_layout(["text"], rows[0]), batch_tokens=64)
    scorer.tokenizer.padding_side = padding_side
    got = scorer(pa.Table.from_pylist(rows)).column("reward").to_pylist()
    assert got == pytest.approx([text_reward(r["text"]) for r in rows], abs=1e-5)


def test_prompt_response_and_conversations_equal_forward_pass(model_dir, reference):
    text_reward, chat_reward, _, _ = reference
    rows = [{"prompt": r["prompt"], "response": r["rejected"]} for r in PAIRS]
    scorer = RewardScorer(model_dir, detect_layout(["prompt", "response"], rows[0]))
    got = scorer(pa.Table.from_pylist(rows)).column("reward").to_pylist()
    assert got == pytest.approx([text_reward(r["prompt"] + r["response"]) for r in rows], abs=1e-5)

    convs = [{"messages": m} for m in CONVERSATIONS]
    scorer = RewardScorer(model_dir, detect_layout(["messages"], convs[0]))
    got = scorer(pa.Table.from_pylist(convs)).column("reward").to_pylist()
    assert got == pytest.approx([chat_reward(m) for m in CONVERSATIONS], abs=1e-5)


def test_long_texts_keep_their_end_and_are_flagged(model_dir, reference):
    _, _, ids_reward, tok = reference
    rows = [{"text": "word " * 40}, {"text": "short"}]
    scorer = RewardScorer(model_dir, detect_layout(["text"], rows[0]), max_length=16, with_lengths=True)
    out = scorer(pa.Table.from_pylist(rows)).to_pylist()
    full = tok(rows[0]["text"] + tok.eos_token)["input_ids"]
    # BOS kept, then the last 15 tokens (the end of the answer, where the reward is read).
    kept = full[:1] + full[-15:]
    assert out[0][TOKENS_COLUMN] == len(full) and out[0][TRUNCATED_COLUMN] is True
    assert out[0]["reward"] == pytest.approx(ids_reward(kept), abs=1e-5)
    assert out[1][TRUNCATED_COLUMN] is False


def test_bad_row_is_named(model_dir):
    scorer = RewardScorer(model_dir, detect_layout(["text"], {"text": "a"}), source="in.jsonl")
    with pytest.raises(BadRowError, match=r"in.jsonl, row 1 of a batch.*field 'text': empty text"):
        scorer(pa.Table.from_pylist([{"text": "fine"}, {"text": "  "}]))


# -- normalization ---------------------------------------------------------------------


def test_normalization_round_trips_through_save_and_reload(model_dir, tmp_path):
    import shutil

    from transformers import AutoConfig

    from rayreward.core.model import load_reward_model

    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    assert load_normalization(copy) is None
    save_normalization(copy, 0.25, 2.0, source="eval.jsonl, 3 pairs")
    stats = load_normalization(copy)
    assert stats == RewardNormalization(0.25, 2.0, "eval.jsonl, 3 pairs")
    config = json.loads((copy / "config.json").read_text())
    assert (config[MEAN_KEY], config[STD_KEY]) == (0.25, 2.0)
    assert config["model_type"] == "llama"  # the rest of the config is kept
    # transformers keeps the keys on load and writes them back on save_pretrained.
    assert AutoConfig.from_pretrained(copy).rayreward_reward_mean == 0.25
    model = load_reward_model(str(copy))
    assert load_normalization(model) == stats
    resaved = tmp_path / "resaved"
    model.save_pretrained(resaved)
    assert load_normalization(resaved) == stats
    # Saving again replaces the numbers.
    save_normalization(copy, -1.0, 0.5)
    assert load_normalization(copy) == RewardNormalization(-1.0, 0.5, None)


def test_normalization_rejects_unusable_numbers(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        save_normalization(tmp_path, 0.0, 1.0)
    (tmp_path / "config.json").write_text("{}")
    for mean, std in ((0.0, 0.0), (0.0, -1.0), (math.nan, 1.0), (0.0, math.inf)):
        with pytest.raises(ValueError):
            save_normalization(tmp_path, mean, std)
    assert json.loads((tmp_path / "config.json").read_text()) == {}


def test_normalized_scores(model_dir, tmp_path, reference):
    import shutil

    text_reward = reference[0]
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    rows = [{"text": "Hello there."}, {"text": "Goodbye."}]
    layout = detect_layout(["text"], rows[0])
    with pytest.raises(ValueError, match="no reward statistics"):
        RewardScorer(copy, layout, normalize=True)
    save_normalization(copy, 0.5, 4.0)
    got = RewardScorer(copy, layout, normalize=True)(pa.Table.from_pylist(rows)).column("reward").to_pylist()
    assert got == pytest.approx([(text_reward(r["text"]) - 0.5) / 4.0 for r in rows], abs=1e-6)
    assert RewardNormalization.from_rewards([1.0, 3.0]) == RewardNormalization(2.0, 1.0)


def test_resolve_model_dir(model_dir, tmp_path):
    import shutil

    assert resolve_model_dir(model_dir) == model_dir
    run = tmp_path / "run"
    shutil.copytree(model_dir, run / "model")
    assert resolve_model_dir(run) == run / "model"
    ckpts = tmp_path / "ckpts"
    for name in ("checkpoint-000001", "checkpoint-000002"):
        shutil.copytree(model_dir, ckpts / name)
    assert resolve_model_dir(ckpts) == ckpts / "checkpoint-000002"
    (tmp_path / "config-only").mkdir()
    shutil.copy(model_dir / "config.json", tmp_path / "config-only")
    with pytest.raises(FileNotFoundError, match="no such file"):
        resolve_model_dir(tmp_path / "run" / "model" / "no-such")
    (tmp_path / "empty").mkdir()
    for folder in ("empty", "config-only"):
        with pytest.raises(FileNotFoundError, match="found no model there"):
            resolve_model_dir(tmp_path / folder)


# -- end to end on Ray Data --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_score_command_on_ray(ray_local, moto_s3, model_dir, reference, tmp_path, monkeypatch):
    import pandas as pd

    from rayreward.commands.cli import main
    from rayreward.runtime.storage import upload_dir

    text_reward, chat_reward, _, _ = reference
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in PAIRS * 4))
    convs = tmp_path / "convs.parquet"
    pd.DataFrame({"messages": CONVERSATIONS, "source": ["a", "b"]}).to_parquet(convs)

    out = tmp_path / "scored.parquet"
    assert main(["score", "--model", str(model_dir), "--data", str(pairs), "--out", str(out),
                 "--num-actors", "2", "--batch-rows", "3", "--cpus-per-actor", "0.5"]) == 0
    df = pd.read_parquet(out)
    assert list(df.columns) == ["prompt", "chosen", "rejected", "id", "reward_chosen", "reward_rejected"]
    assert df["id"].tolist() == [r["id"] for r in PAIRS * 4]  # input order kept
    want = [text_reward(r["prompt"] + r["chosen"]) for r in PAIRS * 4]
    np.testing.assert_allclose(df["reward_chosen"], want, atol=1e-5)

    # The same model from an object store (moto on loopback): downloaded to the cache, same rewards.
    monkeypatch.setenv("RAYREWARD_CACHE", str(tmp_path / "cache"))
    upload_dir(str(model_dir), "s3://rayreward/runs/rm/model")
    out = tmp_path / "convs.jsonl"
    assert main(["score", "--model", "s3://rayreward/runs/rm/model", "--data", str(convs), "--out", str(out)]) == 0
    assert len(list((tmp_path / "cache" / "models").iterdir())) == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["messages"] for r in rows] == CONVERSATIONS and [r["source"] for r in rows] == ["a", "b"]
    np.testing.assert_allclose([r["reward"] for r in rows], [chat_reward(m) for m in CONVERSATIONS], atol=1e-5)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_score_errors_on_ray(ray_local, model_dir, tmp_path, capsys):
    from rayreward.commands.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"text": None}) + "\n")
    # User errors: exit 2, named by file and row before any scoring (the preflight's full pass).
    assert main(["score", "--model", str(model_dir), "--data", str(bad), "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl, row 2" in err and "field 'text': missing value" in err
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"text": 3}) + "\n")
    assert main(["score", "--model", str(model_dir), "--data", str(mixed), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "mixed.jsonl, row 2: field 'text': expected a string" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"text": "fine"}) + "\n")
    assert main(["score", "--model", str(model_dir), "--data", str(good), "--out", str(tmp_path / "o.jsonl"),
                 "--normalize"]) == 2
    assert "has no reward statistics" in capsys.readouterr().err
    assert main(["score", "--model", str(model_dir), "--data", str(bad), "--out", str(tmp_path / "o.csv")]) == 2
