"""The end of a run: the final export, and the exported model scored on the run's eval pairs;
optionally each checkpoint scored beside training.

The final export (LoRA adapters merged, ZeRO shards gathered, ``rayreward.core.checkpoint``)
needs the whole model in memory, so it runs where a training worker could: in one Ray
task sized like a worker (its CPUs, GPU and custom resources), never in a driver on a
small head node. The same task then scores the tokenized eval pairs that the run
already holds in Ray's object store with the exported model (what a user will load).
Only when the cluster is this one machine and the workers use CPUs does the driver do
both itself: same machine, same memory, and no new worker process to start and import
torch into (seconds of every run). The driver turns the rewards into the same headline
metrics as ``rayreward evaluate`` and stores the reward mean and std in the model's
``config.json`` for ``rayreward score --normalize``.
"""

from __future__ import annotations

import os
import tempfile
import time
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


def _single_node_here() -> bool:
    """Whether the cluster is one node, the one this process runs on."""
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    return len(alive) == 1 and alive[0].get("NodeID") == ray.get_runtime_context().get_node_id()


def _export_and_score(checkpoint: str, src_located, model_dir: str, dest_located, eval_ds,
                      use_gpu: bool) -> tuple[tuple[np.ndarray, np.ndarray] | None, str]:
    """Exports ``checkpoint`` to ``model_dir`` and scores ``eval_ds`` (when given) with it;
    returns the rewards and the id of the node this ran on. The ``*_located`` filesystems
    are the driver's (endpoint, keys), for a task whose environment has none."""
    import ray

    from rayreward.core.checkpoint import export_checkpoint

    with tempfile.TemporaryDirectory(prefix="rayreward-final-") as tmp:
        local_checkpoint = _storage.download_dir(checkpoint, os.path.join(tmp, "checkpoint"), src_located)
        local_model = os.path.join(tmp, "model") if _storage.is_uri(model_dir) else model_dir
        export_checkpoint(local_checkpoint, local_model)
        if _storage.is_uri(model_dir):
            _storage.upload_dir(local_model, model_dir, dest_located)
        scores = None if eval_ds is None else _score_pairs(local_model, None, eval_ds, use_gpu)
    return scores, ray.get_runtime_context().get_node_id()


def export_and_summarize(checkpoint: str, model_dir: str, eval_ds, job) -> dict[str, Any]:
    """Exports the run's final checkpoint and scores the eval pairs with the exported model,
    in a Ray task sized like a training worker (see the module docstring).

    Args:
        checkpoint: the checkpoint to export (local path or URI).
        model_dir: where the model goes (local folder on the shared volume, or URI).
        eval_ds: the run's tokenized eval pairs (``PreparedData.eval``), or None.
        job: the ``JobConfig``; its scaling section sizes the task.

    Returns:
        ``{"exported_on": node id}``, and with eval pairs ``{"final_accuracy",
        "final_mean_margin", "final_ece", "final_pairs", "reward_mean", "reward_std"}``.
    """
    scores, node = _where_a_worker_runs(job.scaling, checkpoint, model_dir, eval_ds)
    summary: dict[str, Any] = {"exported_on": node}
    if scores is not None:
        summary.update(_summary(model_dir, *scores))
    return summary


def export_where_a_worker_runs(checkpoint: str, out_dir: str, scaling) -> str:
    """``rayreward.core.checkpoint.export_checkpoint`` in a Ray task sized like one of the
    workers of ``scaling`` (see the module docstring); a sweep's best model and ensemble
    members are exported this way. Returns the id of the node it ran on."""
    return _where_a_worker_runs(scaling, checkpoint, out_dir, None)[1]


def _where_a_worker_runs(s, checkpoint: str, model_dir: str, eval_ds):
    import ray

    located = [_storage.filesystem(p) if _storage.is_uri(p) else None for p in (checkpoint, model_dir)]
    if not s.use_gpu and _single_node_here():
        return _export_and_score(checkpoint, located[0], model_dir, located[1], eval_ds, False)
    task = ray.remote(_export_and_score).options(
        num_cpus=s.cpus_per_worker, num_gpus=s.gpus_per_worker if s.use_gpu else 0,
        resources=dict(s.resources) or None, max_retries=1,
    )
    return ray.get(task.remote(checkpoint, located[0], model_dir, located[1], eval_ds, s.use_gpu))


def _summary(model_dir: str, chosen: np.ndarray, rejected: np.ndarray) -> dict[str, Any]:
    from rayreward.core.metrics import headline_metrics
    from rayreward.evaluation.normalization import RewardNormalization

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



class CheckpointEval:
    """Ray Train's checkpoint validation function of a run (``storage.checkpoint_eval=ray``).

    Ray runs it in a task of its own for each checkpoint reported with ``validation=True``,
    while the workers go on training: it exports the checkpoint (ZeRO shards or LoRA
    adapters consolidated, as ``rayreward export`` does) into a temporary folder and
    scores the run's tokenized eval pairs with it. The metrics it returns join the
    checkpoint's in Ray's record, under the names the Trainer's in-loop evaluation uses,
    so ``storage.checkpoint_score_attribute: eval_accuracy`` ranks checkpoints either way.
    ``eval_loss`` is the mean pairwise loss ``-log sigmoid(r_chosen - r_rejected)``
    (data margins and reward centering are training-time terms and are not included).
    """

    def __init__(self, eval_ds, use_gpu: bool):
        self.eval_ds, self.use_gpu = eval_ds, use_gpu

    def __call__(self, checkpoint, **_: Any) -> dict[str, float]:
        from rayreward.core.checkpoint import export_checkpoint
        from rayreward.core.metrics import headline_metrics

        started = time.monotonic()
        with checkpoint.as_directory() as folder, tempfile.TemporaryDirectory(prefix="rayreward-ckpt-eval-") as tmp:
            model_dir = export_checkpoint(folder, os.path.join(tmp, "model"))
            chosen, rejected = _score_pairs(model_dir, None, self.eval_ds, self.use_gpu)
        metrics = {f"eval_{k}": v for k, v in headline_metrics(chosen, rejected).items()}
        metrics["eval_loss"] = float(np.logaddexp(0.0, -(chosen - rejected)).mean())
        metrics["eval_seconds"] = round(time.monotonic() - started, 3)
        return metrics


def checkpoint_validation(eval_ds, scaling):
    """The ``ray.train.ValidationConfig`` of a run whose checkpoints are evaluated beside
    training, its task sized like one training worker (on a GPU when they have one)."""
    from ray.train import ValidationConfig

    resources = {"num_cpus": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["num_gpus"] = scaling.gpus_per_worker
    return ValidationConfig(fn=CheckpointEval(eval_ds, scaling.use_gpu), ray_remote_kwargs=resources)
