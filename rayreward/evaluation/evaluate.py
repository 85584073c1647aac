"""What a trained reward model is worth on preference pairs (``rayreward evaluate``).

Steps: resolve the model -> read the pairs -> score them on Ray Data (an actor pool,
one model per actor) -> compute the metrics on the driver -> write metrics.json, a
markdown report and figures -> optionally store the reward statistics in the model's
config and show a few pairs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rayreward.data.formats import DataFormatError
from rayreward.core.metrics import DEFAULT_BINS, evaluation_metrics, headline_metrics, preference_probability
from rayreward.evaluation.score import ActorPool, read_with_layout, score_dataset
from rayreward.evaluation.model_ref import ModelRef, resolve_model
from rayreward.evaluation.scorer import DEFAULT_BATCH_TOKENS, TOKENS_COLUMN, TRUNCATED_COLUMN

logger = logging.getLogger(__name__)

# Columns used as the grouping column when none is named, in this order.
GROUP_COLUMNS = ("group", "subset", "kind", "source", "category", "domain")
MAX_GROUPS = 100


@dataclass
class EvalResult:
    """What ``evaluate`` found and wrote.

    Attributes:
        metrics: everything in ``metrics.json``.
        rewards_chosen: one reward per pair, in data order.
        rewards_rejected: likewise.
        paths: files written, by name (empty without ``out_dir``).
        samples: the ``--show`` table (``samples.format_table`` columns), or None.
    """

    metrics: dict[str, Any]
    rewards_chosen: np.ndarray
    rewards_rejected: np.ndarray
    paths: dict[str, Path] = field(default_factory=dict)
    samples: Any = None

    @property
    def headline(self) -> dict[str, float]:
        return {k: self.metrics[k] for k in ("accuracy", "mean_margin", "ece", "pairs")}


def evaluate(
    model: str | os.PathLike | ModelRef,
    data: str,
    out_dir: str | os.PathLike | None = None,
    show: int = 0,
    group_column: str | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    max_length: int | None = None,
    n_bins: int = DEFAULT_BINS,
    save_normalization: bool = False,
    prompt_column: str = "prompt",
    pool: ActorPool = ActorPool(),
    revision: str | None = None,
) -> EvalResult:
    """Scores preference pairs with a model and measures how good its rewards are.

    Call inside a Ray session (``rayreward.evaluation.score.scoring_session``).

    Args:
        model: a model folder, run folder, checkpoint, PEFT adapter folder, hub id or
            object-store URI (``model_ref.resolve_model``).
        data: pairs (text, prompt + answers, conversations or pre-tokenized) in a
            jsonl/json/parquet/csv file, a directory of them or a glob.
        out_dir: where metrics.json, report.md and the figures go; None writes nothing.
        show: print this many pairs with their rewards and P(chosen).
        group_column: report accuracy per value of this column; when None, the first
            of ``GROUP_COLUMNS`` the data has is used.
        batch_tokens: token budget of one forward pass.
        max_length: longer answers keep their last tokens; None: the model's limit.
        n_bins: calibration bins.
        save_normalization: store the mean and std of all rewards in the model's
            config.json (``normalization.save_normalization``).
        prompt_column: the prompt column.
        pool: actor resources.
        revision: the hub revision of a hub id.

    Returns:
        An ``EvalResult``; ``result.headline`` holds accuracy, mean margin and ECE.

    Raises:
        DataFormatError: the data are not preference pairs, or the group column is
            missing.
    """
    ref = resolve_model(model, revision)
    if save_normalization and ref.temporary:
        raise ValueError(f"--save-normalization: {ref.label} is a checkpoint or adapter that was exported to a "
                         "temporary folder; export it first (`rayreward export`) and evaluate the exported model")
    if save_normalization and ref.kind != "folder":
        raise ValueError(f"--save-normalization: {ref.label} is a downloaded copy (hub or object store), which the "
                         "statistics would not reach; download it to a folder and evaluate that folder")
    # 1. data and layout
    ds, columns, first, layout = read_with_layout(data, None, prompt_column)
    if layout.kind != "pairs":
        raise DataFormatError(f"--data {data}: evaluate needs preference pairs ('chosen' and 'rejected'); "
                              f"found columns {sorted(columns)}. To score single answers use `rayreward score`.")
    group = _group_column(group_column, columns, first, data)
    # 2. scores
    scored = score_dataset(ds, ref, layout, pool, batch_tokens=batch_tokens, max_length=max_length,
                           keep_columns=[group] if group else [], with_lengths=True, source=str(data))
    parts: dict[str, list] = {"reward_chosen": [], "reward_rejected": [], TOKENS_COLUMN: [], TRUNCATED_COLUMN: []}
    if group:
        parts[group] = []
    for batch in scored.iter_batches(batch_format="numpy", batch_size=None):
        for key in parts:
            parts[key].append(np.asarray(batch[key]))
    cols = {k: np.concatenate(v) if v else np.array([]) for k, v in parts.items()}
    chosen, rejected = cols["reward_chosen"].astype(np.float64), cols["reward_rejected"].astype(np.float64)
    groups = None
    if group:
        groups = ["(missing)" if v is None else str(v) for v in cols[group].tolist()]
        if len(set(groups)) > MAX_GROUPS:
            logger.warning("column %r has %d values; accuracy by group is left out", group, len(set(groups)))
            groups, group = None, None
    # 3. metrics
    metrics: dict[str, Any] = {
        "model": ref.label,
        "data": str(data),
        "format": layout.fmt,
        "max_length": max_length,
        "truncated": int(cols[TRUNCATED_COLUMN].sum()),
        "group_column": group,
    }
    metrics.update(headline_metrics(chosen, rejected, n_bins))
    metrics.update(evaluation_metrics(chosen, rejected, cols[TOKENS_COLUMN], groups, n_bins))
    all_rewards = np.concatenate([chosen, rejected])
    metrics["normalization"] = {"mean": float(all_rewards.mean()), "std": float(all_rewards.std())}
    result = EvalResult(metrics, chosen, rejected)
    # 4. outputs
    if save_normalization:
        from rayreward.evaluation.normalization import save_normalization as save

        save(ref.path, all_rewards.mean(), all_rewards.std(), source=f"{Path(str(data)).name}, {chosen.size} pairs")
        metrics["normalization"]["saved_to"] = str(Path(ref.path) / "config.json")
    if out_dir is not None:
        from rayreward.evaluation.report import write_report

        result.paths = write_report(metrics, chosen, rejected, out_dir)
    if show:
        result.samples = _samples(ref, ds, layout, show, chosen, rejected)
    return result


def _group_column(name: str | None, columns: list[str], first: dict[str, Any], data) -> str | None:
    if name is not None:
        if name not in columns:
            raise DataFormatError(f"--group-column {name}: no such column in {data}; found {sorted(columns)}")
        return name
    for candidate in GROUP_COLUMNS:
        if candidate in columns and isinstance(first.get(candidate), (str, int)) and not isinstance(first.get(candidate), bool):
            return candidate
    return None


def _samples(ref: ModelRef, ds, layout, n: int, chosen: np.ndarray, rejected: np.ndarray):
    """The first ``n`` pairs as ``samples.format_table`` wants them (texts as the model read them)."""
    import pandas as pd

    from rayreward.data.formats import PairEncoder
    from rayreward.data.tokenizer import load_tokenizer

    name, kwargs = ref.local()
    tok = load_tokenizer(name, **kwargs)
    rows = ds.take(n)
    encoded = PairEncoder(tok, layout.fmt, layout.names).encode_rows(rows)
    diff = chosen[: len(rows)] - rejected[: len(rows)]
    return pd.DataFrame({
        "chosen_text": [tok.decode(p["input_ids_chosen"], skip_special_tokens=True) for p in encoded],
        "rejected_text": [tok.decode(p["input_ids_rejected"], skip_special_tokens=True) for p in encoded],
        "reward_chosen": chosen[: len(rows)],
        "reward_rejected": rejected[: len(rows)],
        "p_chosen": preference_probability(diff),
    })
