"""End of a training run: score the eval pairs with the exported model, sum it up.

The exported model (what a user will load) scores the tokenized eval pairs that the
run already holds in Ray's object store, in one Ray task sized like a training worker
(so on a GPU cluster it runs on a GPU). The driver turns the rewards into the same
headline metrics as ``rayreward evaluate`` and stores the reward mean and std in the
model's ``config.json`` for ``rayreward score --normalize``.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

from rayreward.runtime import storage as _storage

_BATCH_ROWS = 256


def _score_pairs(model_dir: str, located, eval_ds, use_gpu: bool) -> tuple[np.ndarray, np.ndarray]:
    from rayreward.evaluation.scorer import Layout, RewardScorer

    # The tokenized pairs go through RewardScorer, the forward pass of `rayreward
    # score`, `evaluate` and `serve`, so the numbers here are the ones users see later.
    with tempfile.TemporaryDirectory(prefix="rayreward-final-") as tmp:
        local = _storage.download_dir(model_dir, os.path.join(tmp, "model"), located)
        scorer = RewardScorer(local, Layout("pairs", "pretokenized"), source="the run's eval data",
                              device=None if use_gpu else "cpu")
    chosen, rejected = [], []
    for batch in eval_ds.iter_batches(batch_size=_BATCH_ROWS, batch_format="pyarrow"):
        c_ids, r_ids = batch["input_ids_chosen"].to_pylist(), batch["input_ids_rejected"].to_pylist()
        rows = [{"input_ids_chosen": c, "attention_mask_chosen": [1] * len(c),
                 "input_ids_rejected": r, "attention_mask_rejected": [1] * len(r)} for c, r in zip(c_ids, r_ids)]
        rewards, _, _ = scorer.score_rows(rows)
        chosen.append(np.asarray(rewards["reward_chosen"]))
        rejected.append(np.asarray(rewards["reward_rejected"]))
    return np.concatenate(chosen), np.concatenate(rejected)


def summarize(model_dir: str, eval_ds, job) -> dict[str, Any]:
    """Scores ``eval_ds`` with the model in ``model_dir``; stores the reward statistics.

    Args:
        model_dir: the exported model (local folder or URI).
        eval_ds: the run's tokenized eval pairs (``PreparedData.eval``).
        job: the ``JobConfig``; its scaling section sizes the scoring task.

    Returns:
        ``{"final_accuracy", "final_mean_margin", "final_ece", "final_pairs",
        "reward_mean", "reward_std"}``.
    """
    import ray

    from rayreward.core.metrics import headline_metrics
    from rayreward.evaluation.normalization import RewardNormalization

    s = job.scaling
    task = ray.remote(_score_pairs).options(
        num_cpus=s.cpus_per_worker, num_gpus=s.gpus_per_worker if s.use_gpu else 0
    )
    located = _storage.filesystem(model_dir) if _storage.is_uri(model_dir) else None
    chosen, rejected = ray.get(task.remote(model_dir, located, eval_ds, s.use_gpu))
    headline = headline_metrics(chosen, rejected)
    summary = {f"final_{k}": v for k, v in headline.items()}
    rewards = np.concatenate([chosen, rejected])
    if rewards.std() > 0:
        norm = RewardNormalization.from_rewards(rewards, source=f"eval data at the end of training, {len(chosen)} pairs")
        _store_normalization(model_dir, norm)
        summary.update(reward_mean=norm.mean, reward_std=norm.std)
    return summary


def _store_normalization(model_dir: str, norm) -> None:
    from rayreward.evaluation.normalization import save_normalization

    if not _storage.is_uri(model_dir):
        save_normalization(model_dir, norm.mean, norm.std, norm.source)
        return
    fs, path = _storage.filesystem(model_dir)
    config_path = path.rstrip("/") + "/config.json"
    with fs.open_input_stream(config_path) as f:
        text = f.read().decode("utf-8")
    with tempfile.TemporaryDirectory(prefix="rayreward-norm-") as tmp:
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            f.write(text)
        save_normalization(tmp, norm.mean, norm.std, norm.source)
        with open(os.path.join(tmp, "config.json"), encoding="utf-8") as f:
            _storage.write_text(_storage.join(model_dir, "config.json"), f.read())


def headline_line(summary: dict[str, Any]) -> str:
    from rayreward.core.metrics import format_headline

    return format_headline({k.removeprefix("final_"): v for k, v in summary.items() if k.startswith("final_")})

