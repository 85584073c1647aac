"""Public reward-model benchmarks scored as their official code scores them.

One module per suite holds its rules, schema and pure scoring (rewards in, scores out):
``rewardbench`` (RewardBench v1), ``rewardbench2`` (RewardBench 2) and ``rmbench``
(RM-Bench). ``data`` reads and checks a suite's rows, ``runner`` scores their
completions with a reward model on Ray Data (``RewardScorer`` actors) and ``report``
writes the JSON, parquet, table and chart. ``rayreward evaluate --suite`` drives them.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any, Callable, Mapping, Sequence

from rayreward.evaluation.suites import rewardbench, rewardbench2, rmbench

SUITES: dict[str, ModuleType] = {m.NAME: m for m in (rewardbench, rewardbench2, rmbench)}


def get_suite(name: str) -> ModuleType:
    """The module of a suite by its command-line name.

    Raises:
        ValueError: no such suite.
    """
    if name not in SUITES:
        raise ValueError(f"--suite: got {name!r}; expected one of {', '.join(SUITES)}")
    return SUITES[name]


def score_suite(name: str, rows: Sequence[Mapping[str, Any]], rewards: Sequence[Sequence[float]]) -> dict[str, Any]:
    """A suite's scores of rows given the rewards of each row's completions.

    Adds to the suite's own result ``rows``, ``completions``, ``nan_rewards`` (NaN
    rewards, each counted wrong as the official code counts them) and ``nan_rows``.

    Args:
        name: the suite (``rewardbench``, ``rewardbench2``, ``rm-bench``).
        rows: checked rows in the suite's schema.
        rewards: per row, the rewards of ``suite.completions(row)`` in that order.

    Raises:
        ValueError: a row has a different number of rewards than completions.
    """
    suite = get_suite(name)
    for i, (row, values) in enumerate(zip(rows, rewards)):
        if len(values) != len(suite.completions(row)):
            raise ValueError(f"row {i}: {len(values)} rewards for {len(suite.completions(row))} completions")
    if len(rows) != len(rewards):
        raise ValueError(f"{len(rows)} rows but rewards for {len(rewards)}")
    result = suite.score(rows, rewards)
    nan_rows = [any(math.isnan(float(v)) for v in values) for values in rewards]
    result.update(rows=len(rows), completions=sum(len(v) for v in rewards),
                  nan_rewards=sum(math.isnan(float(v)) for values in rewards for v in values),
                  nan_rows=sum(nan_rows), rules=suite.RULES)
    return result


def score_with(name: str, rows: Sequence[Mapping[str, Any]], reward_of: Callable[[str, str], float]) -> dict[str, Any]:
    """Scores rows with a plain function ``reward_of(prompt, answer)`` (no model, no Ray).

    Example:
        >>> rows = [{"prompt": "2+2?", "chosen": "4", "rejected": "5", "subset": "math-prm"}]
        >>> score_with("rewardbench", rows, lambda p, a: float(a == "4"))["sections"]["Reasoning"]["score"]
        1.0
    """
    suite = get_suite(name)
    return score_suite(name, rows, [[reward_of(r["prompt"], a) for a in suite.completions(r)] for r in rows])
