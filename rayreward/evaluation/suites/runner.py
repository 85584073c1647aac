"""Scoring the suites' completions with reward models on Ray Data.

Steps: read and check every suite's rows (before Ray) -> per model, unroll every row
into its completions, render each as the model reads it (its chat template, or
RewardBench's default Tulu layout when it has none), drop duplicates -> score them
once each with ``RewardScorer`` actors (``rayreward.evaluation.score.score_dataset``,
the path of ``evaluate`` and ``score``) -> fold the rewards back into rows -> the
suites' pure scoring.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from rayreward.evaluation.suites import get_suite, score_suite
from rayreward.evaluation.suites.data import load_rows

logger = logging.getLogger(__name__)

# RewardBench's default conversation template (fastchat "tulu") for tokenizers without
# a chat template: the user turn, then the assistant turn the reward is read after.
TULU_PROMPT = "<|user|>\n{prompt}\n<|assistant|>\n"


@dataclass
class SuiteData:
    """One suite's checked rows."""

    name: str
    rows: list[dict[str, Any]]
    where: str


@dataclass
class ModelRun:
    """What scoring one model over the suites took.

    Attributes:
        model: the model as given.
        model_dirs: the folders scored (several for an ensemble; rewards are their mean).
        rendering: ``chat template`` or ``tulu text``.
        completions: completions asked for over all suites; ``unique``: scored.
        truncated: unique completions longer than the model's limit (they kept their
            last tokens).
        seconds: wall time of the Ray Data scoring.
    """

    model: str
    model_dirs: list[str]
    rendering: str = ""
    completions: int = 0
    unique: int = 0
    truncated: int = 0
    seconds: float = 0.0


@dataclass
class SuiteResults:
    """A suite's data and every model's scores and rewards on it."""

    data: SuiteData
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    rewards: dict[str, list[list[float]]] = field(default_factory=dict)


def load_suites(suites: Sequence[str], data: dict[str, str | None]) -> list[SuiteData]:
    """Reads and checks each suite's rows (``data`` maps a suite to its source; None: the hub)."""
    loaded = []
    for name in suites:
        suite = get_suite(name)
        rows, where = load_rows(suite, data.get(name), field=f"--data ({name})")
        loaded.append(SuiteData(name, rows, where))
    return loaded


def model_refs(model: str, revision: str | None = None) -> list:
    """The models behind ``--model`` (``ModelRef``s: a folder, hub id, object-store URI or
    adapter): one, or an ensemble folder's members."""
    from rayreward.evaluation.ensemble import is_ensemble, read_ensemble
    from rayreward.evaluation.model_ref import resolve_model

    if is_ensemble(model):
        return [resolve_model(p) for p in read_ensemble(model)]
    return [resolve_model(model, revision)]


def render(tokenizer, pairs: Sequence[tuple[str, str]]):
    """Rows of ``(prompt, answer)`` as the scorer reads them, and their ``Layout``."""
    from rayreward.evaluation.scorer import detect_layout

    if getattr(tokenizer, "chat_template", None):
        rows = [{"prompt": [{"role": "user", "content": p}], "messages": [{"role": "assistant", "content": a}]}
                for p, a in pairs]
        rendering = "chat template"
    else:
        rows = [{"prompt": TULU_PROMPT.format(prompt=p), "response": a} for p, a in pairs]
        rendering = "tulu text"
    return rows, detect_layout(list(rows[0]), rows[0], None, "prompt"), rendering


def score_pairs(ref, pairs: Sequence[tuple[str, str]], pool, batch_tokens: int, max_length: int | None):
    """Rewards of ``(prompt, answer)`` pairs by one model, on Ray Data actors.

    Returns:
        ``(rewards as float64 numpy array, truncated count, rendering)``.
    """
    import numpy as np
    import pyarrow as pa
    import ray.data

    from rayreward.data.tokenizer import load_tokenizer
    from rayreward.evaluation.score import score_dataset
    from rayreward.evaluation.scorer import TRUNCATED_COLUMN

    name, kwargs = ref.local()
    rows, layout, rendering = render(load_tokenizer(name, **kwargs), pairs)
    # Blocks of one Ray Data batch each, so every actor of the pool gets work.
    step = pool.batch_rows
    ds = ray.data.from_arrow([pa.Table.from_pylist(rows[i:i + step]) for i in range(0, len(rows), step)])
    scored = score_dataset(ds, ref, layout, pool, batch_tokens=batch_tokens, max_length=max_length,
                           keep_columns=[], with_lengths=True, source=f"{ref.label} suite completions")
    rewards, truncated = [], 0
    for batch in scored.iter_batches(batch_format="numpy", batch_size=None):
        rewards.append(np.asarray(batch["reward"], dtype=np.float64))
        truncated += int(np.asarray(batch[TRUNCATED_COLUMN]).sum())
    return np.concatenate(rewards), truncated, rendering


def unroll(loaded: Sequence[SuiteData]) -> tuple[list[tuple[str, str]], list[int]]:
    """Every completion of every suite as ``(prompt, answer)``, each distinct one once.

    Returns:
        ``(unique pairs, position)``: ``position[k]`` is the index in ``unique`` of the
        k-th completion in suite, row and ``completions`` order.
    """
    index: dict[tuple[str, str], int] = {}
    position = []
    for data in loaded:
        suite = get_suite(data.name)
        for row in data.rows:
            position += [index.setdefault((row["prompt"], a), len(index)) for a in suite.completions(row)]
    return list(index), position


def fold(loaded: Sequence[SuiteData], rewards, position: Sequence[int]) -> list[list[list[float]]]:
    """Rewards of the unique completions back into rows: per suite, per row, a list."""
    out, k = [], 0
    for data in loaded:
        suite = get_suite(data.name)
        per_row = []
        for row in data.rows:
            n = len(suite.completions(row))
            per_row.append([float(rewards[position[k + i]]) for i in range(n)])
            k += n
        out.append(per_row)
    return out


def run_suites(loaded: Sequence[SuiteData], models: Sequence[str], pool, batch_tokens: int,
               max_length: int | None = None, revision: str | None = None
               ) -> tuple[list[SuiteResults], list[ModelRun]]:
    """Scores every suite with every model (call inside ``scoring_session``).

    Every completion of every suite is unrolled once per model, rendered with that
    model's template, deduplicated and scored in one Ray Data pass.

    Returns:
        ``(one SuiteResults per suite, one ModelRun per model)``.
    """
    import numpy as np

    results = [SuiteResults(data) for data in loaded]
    runs = []
    unique, position = unroll(loaded)
    for model in models:
        dirs = model_refs(model, revision)
        run = ModelRun(model, [d.path for d in dirs], completions=len(position), unique=len(unique))
        start = time.perf_counter()
        member_rewards = []
        for d in dirs:
            values, truncated, run.rendering = score_pairs(d, unique, pool, batch_tokens, max_length)
            member_rewards.append(values)
            run.truncated = max(run.truncated, truncated)
        run.seconds = time.perf_counter() - start
        # An ensemble's reward is the mean of its members' (as `rayreward serve` gives it).
        for res, per_row in zip(results, fold(loaded, np.mean(member_rewards, axis=0), position)):
            res.rewards[model] = per_row
            res.scores[model] = score_suite(res.data.name, res.data.rows, per_row)
        runs.append(run)
        logger.info("%s: %d completions (%d unique) scored in %.1f s", model, run.completions, run.unique, run.seconds)
    return results, runs



def score_in_memory(model, tokenizer, loaded: Sequence[SuiteData], batch_tokens: int,
                    max_length: int | None = None) -> list[dict[str, Any]]:
    """Each suite's scores by a model already in memory, in this process (no Ray Data).

    What a sweep trial runs at each checkpoint on its slice of a suite: the same
    rendering and ``RewardScorer`` tokenization and forward batches as ``run_suites``.
    The caller puts the model in eval mode.
    """
    from rayreward.evaluation.scorer import RewardScorer

    unique, position = unroll(loaded)
    rows, layout, _ = render(tokenizer, unique)
    scorer = RewardScorer.from_model(model, tokenizer, layout, batch_tokens, max_length, source="suite completions")
    seqs = next(iter(scorer.encode(rows).values())).ids
    rewards = scorer.rewards(seqs)
    return [score_suite(d.name, d.rows, per_row) for d, per_row in zip(loaded, fold(loaded, rewards, position))]


def metric_names(name: str) -> list[str]:
    """The metrics a suite reports to a sweep: ``<suite>/overall`` and one per table column."""
    return [f"{name}/overall", *(f"{name}/{c}" for c in get_suite(name).TABLE_COLUMNS)]


def metrics_of(name: str, scores: dict[str, Any]) -> dict[str, float]:
    """A suite's scores as flat metrics (``rewardbench2/overall``, ``rewardbench2/Ties``, ...);
    a section without data is left out."""
    out = {f"{name}/overall": float(scores["overall"])}
    for column in get_suite(name).TABLE_COLUMNS:
        if column in scores["sections"]:
            out[f"{name}/{column}"] = float(scores["sections"][column]["score"])
    return out
