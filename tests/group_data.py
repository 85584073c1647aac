"""Ranked and ratings data sets built from the bundled sample pairs (for the group tests).

The sample's chosen answers are polite and on topic; its rejected ones are off topic,
refusals or rude. A prompt's answers become a ranked group (good > off topic > refusal
> rude; two answers of one kind tie), and each answer a rated row with two attributes.
"""

from __future__ import annotations

import random
from collections import defaultdict

TIERS = {"chosen": 3.0, "off_topic": 2.0, "refusal": 1.0, "rude": 0.0}
HELPFULNESS = {"chosen": 4.0, "off_topic": 2.0, "refusal": 1.0, "rude": 0.0}
POLITENESS = {"chosen": 1.0, "off_topic": 1.0, "refusal": 0.5, "rude": 0.0}


def answers_by_prompt(pairs: list[dict]) -> dict[str, list[tuple[str, str]]]:
    """prompt -> distinct (text, kind) answers, in first-seen order."""
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for p in pairs:
        out[p["prompt"]].setdefault(p["chosen"], "chosen")
        out[p["prompt"]].setdefault(p["rejected"], p["kind"])
    return {prompt: list(answers.items()) for prompt, answers in out.items()}


def ranked_rows(pairs: list[dict], seed: int = 0, k_range=(2, 5), with_ranking_every: int = 3) -> list[dict]:
    """One ranked row per prompt: K in ``k_range`` answers, ``scores`` with ties, or a ``ranking``.

    Every third row gives a strict ``ranking`` (ties broken at random) instead of scores;
    the other column is then null, as a table with both columns holds it.
    """
    rng = random.Random(seed)
    rows = []
    for i, (prompt, answers) in enumerate(sorted(answers_by_prompt(pairs).items())):
        chosen = [a for a in answers if a[1] == "chosen"]
        others = [a for a in answers if a[1] != "chosen"]
        if not chosen or not others:
            continue
        k = min(rng.randint(*k_range), len(answers))
        picked = [rng.choice(chosen)] + rng.sample(others, min(k - 1, len(others)))
        rng.shuffle(picked)
        scores = [TIERS[kind] for _, kind in picked]
        if len(set(scores)) < 2:
            continue
        row = {"prompt": prompt, "responses": [text for text, _ in picked]}
        if i % with_ranking_every == 0:
            keyed = sorted(range(len(picked)), key=lambda j: (-scores[j], rng.random()))
            row["ranking"], row["scores"] = keyed, None
        else:
            row["ranking"], row["scores"] = None, scores
        rows.append(row)
    return rows


def ratings_rows(pairs: list[dict], seed: int = 0, missing: float = 0.2) -> list[dict]:
    """One rated row per distinct answer; each attribute missing (None) with probability ``missing``."""
    rng = random.Random(seed)
    rows = []
    for prompt, answers in sorted(answers_by_prompt(pairs).items()):
        for text, kind in answers:
            h = None if rng.random() < missing else HELPFULNESS[kind]
            p = None if rng.random() < missing else POLITENESS[kind]
            if h is None and p is None:
                h = HELPFULNESS[kind]
            rows.append({"prompt": prompt, "response": text, "helpfulness": h, "politeness": p})
    return rows


THREE = ["helpfulness", "politeness", "brevity"]
THREE_WEIGHTS = [0.5, 0.3, 0.2]


def export_rated_model(path, steps: int = 6):
    """A tiny Llama with three attribute outputs trained a few steps on sample ratings
    (``brevity``: 1 for answers under 100 characters) and exported as ``rayreward`` exports it."""
    from rayreward import RewardConfig, RewardTrainer
    from rayreward.core import tiny
    from rayreward.data.tokenizer import SAMPLE_DATA_DIR, builtin_tokenizer

    import json

    pairs = [json.loads(line) for line in open(SAMPLE_DATA_DIR / "train.jsonl", encoding="utf-8")]
    rows = [dict(r, brevity=float(len(r["response"]) < 100)) for r in ratings_rows(pairs)[:200]]
    tok = builtin_tokenizer()
    model = tiny.build_model("tiny-llama", tok, hidden_size=32, num_layers=2, seed=0, num_labels=3)
    args = RewardConfig(output_dir=str(path) + "-out", loss_type="regression", attributes=THREE,
                        attribute_weights=THREE_WEIGHTS, max_steps=steps, per_device_train_batch_size=8,
                        learning_rate=2e-3, save_strategy="no", report_to=[], disable_tqdm=True,
                        dataloader_pin_memory=False, seed=0)
    trainer = RewardTrainer(model=model, args=args, tokenizer=tok, train_dataset=rows)
    trainer.train()
    trainer.save_model(str(path))
    return path, rows
