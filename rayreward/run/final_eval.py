"""The end of a run: the final export, and the exported model scored on the run's eval data
(pairs, ranked groups or ratings, ``rayreward.run.eval_scores``); optionally each
checkpoint scored beside training.

The final export (LoRA adapters merged, ZeRO shards gathered, ``rayreward.core.checkpoint``)
needs the whole model in memory, so it runs where a training worker could: in one Ray
task sized like a worker (its CPUs, GPU and custom resources), never in a driver on a
small head node. The same task then scores the tokenized eval data that the run
already holds in Ray's object store with the exported model (what a user will load).
Only when the cluster is this one machine and the workers use CPUs does the driver do
both itself: same machine, same memory, and no new worker process to start and import
torch into (seconds of every run). The driver turns the rewards into the same metrics
as ``rayreward evaluate`` and, for pairs and groups, stores the reward mean and std in
the model's ``config.json`` for ``rayreward score --normalize``.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

from rayreward.runtime import storage as _storage


def _single_node_here() -> bool:
    """Whether the cluster is one node, the one this process runs on."""
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    return len(alive) == 1 and alive[0].get("NodeID") == ray.get_runtime_context().get_node_id()


def _export_and_score(checkpoint: str, src_located, model_dir: str, dest_located, eval_ds, kind: str,
                      use_gpu: bool):
    """Exports ``checkpoint`` to ``model_dir`` and scores ``eval_ds`` (when given; data of
    ``kind``) with it; returns the ``EvalScores`` (or None) and the id of the node this
    ran on. The ``*_located`` filesystems are the driver's (endpoint, keys), for a task
    whose environment has none."""
    import ray

    from rayreward.core.checkpoint import export_checkpoint
    from rayreward.run.eval_scores import score_eval

    with tempfile.TemporaryDirectory(prefix="rayreward-final-") as tmp:
        local_checkpoint = _storage.download_dir(checkpoint, os.path.join(tmp, "checkpoint"), src_located)
        local_model = os.path.join(tmp, "model") if _storage.is_uri(model_dir) else model_dir
        export_checkpoint(local_checkpoint, local_model)
        if _storage.is_uri(model_dir):
            _storage.upload_dir(local_model, model_dir, dest_located)
        scores = None if eval_ds is None else score_eval(local_model, None, eval_ds, kind, use_gpu)
    return scores, ray.get_runtime_context().get_node_id()


def export_and_summarize(checkpoint: str, model_dir: str, eval_ds, job, kind: str = "pairs") -> dict[str, Any]:
    """Exports the run's final checkpoint and scores the eval data with the exported model,
    in a Ray task sized like a training worker (see the module docstring).

    Args:
        checkpoint: the checkpoint to export (local path or URI).
        model_dir: where the model goes (local folder on the shared volume, or URI).
        eval_ds: the run's tokenized eval data (``PreparedData.eval``), or None.
        job: the ``JobConfig``; its scaling section sizes the task.
        kind: what the data holds (``PreparedData.kind``): pairs, groups or ratings.

    Returns:
        ``{"exported_on": node id}``, and with eval data the metrics of its shape
        (``rayreward.run.eval_scores``) prefixed ``final_``: ``final_accuracy``,
        ``final_mean_margin``, ``final_ece``, ``final_pairs`` for pairs;
        ``final_top1_accuracy``, ``final_best_of_k_accuracy``, ``final_pairwise_accuracy``,
        ``final_accuracy``, ``final_kendall_tau``, ``final_groups`` for groups;
        ``final_<attribute>/rmse`` (``/pearson``, ``/spearman``), their means and
        ``final_rated_rows`` for ratings; ``final_loss`` for all; plus ``reward_mean`` and
        ``reward_std`` for pairs and groups.
    """
    scores, node = _where_a_worker_runs(job.scaling, checkpoint, model_dir, eval_ds, kind)
    summary: dict[str, Any] = {"exported_on": node}
    if scores is not None:
        summary.update(_summary(model_dir, scores, job.train["loss_type"]))
    return summary


def export_where_a_worker_runs(checkpoint: str, out_dir: str, scaling) -> str:
    """``rayreward.core.checkpoint.export_checkpoint`` in a Ray task sized like one of the
    workers of ``scaling`` (see the module docstring); a sweep's best model and ensemble
    members are exported this way. Returns the id of the node it ran on."""
    return _where_a_worker_runs(scaling, checkpoint, out_dir, None)[1]


def _where_a_worker_runs(s, checkpoint: str, model_dir: str, eval_ds, kind: str = "pairs"):
    import ray

    located = [_storage.filesystem(p) if _storage.is_uri(p) else None for p in (checkpoint, model_dir)]
    if not s.use_gpu and _single_node_here():
        return _export_and_score(checkpoint, located[0], model_dir, located[1], eval_ds, kind, False)
    task = ray.remote(_export_and_score).options(
        num_cpus=s.cpus_per_worker, num_gpus=s.gpus_per_worker if s.use_gpu else 0,
        resources=dict(s.resources) or None, max_retries=1,
    )
    return ray.get(task.remote(checkpoint, located[0], model_dir, located[1], eval_ds, kind, s.use_gpu))


def _summary(model_dir: str, scores, loss_type: str) -> dict[str, Any]:
    from rayreward.evaluation.normalization import RewardNormalization
    from rayreward.run.eval_scores import eval_loss, eval_metrics

    summary = {f"final_{k}": v for k, v in eval_metrics(scores).items()}
    summary["final_loss"] = eval_loss(scores, loss_type)
    rewards = scores.rewards()
    if rewards is not None and rewards.std() > 0:
        norm = RewardNormalization.from_rewards(rewards, source=f"eval data at the end of training, {scores.size}")
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
    """The console's line of a run's ``final_*`` metrics, whatever the data's shape."""
    from rayreward.run.eval_scores import summary_line

    return summary_line(summary)


class CheckpointEval:
    """Ray Train's checkpoint validation function of a run (``storage.checkpoint_eval=ray``).

    Ray runs it in a task of its own for each checkpoint reported with ``validation=True``,
    while the workers go on training: it exports the checkpoint (ZeRO shards or LoRA
    adapters consolidated, as ``rayreward export`` does) into a temporary folder and
    scores the run's tokenized eval data with it (pairs, ranked groups or ratings). The
    metrics it returns join the checkpoint's in Ray's record, under the names the
    Trainer's in-loop evaluation uses (``rayreward.run.eval_scores``), so
    ``storage.checkpoint_score_attribute: eval_accuracy`` (pairs, groups) or ``eval_loss``
    ranks checkpoints either way. ``eval_loss`` is the training loss without its
    training-time terms (data margins, reward centering): the mean pairwise loss
    ``-log sigmoid(r_chosen - r_rejected)``, the groups' ``loss_type``, or the ratings'
    masked mean squared error.
    """

    def __init__(self, eval_ds, use_gpu: bool, kind: str = "pairs", loss_type: str = "bradley_terry"):
        self.eval_ds, self.use_gpu, self.kind, self.loss_type = eval_ds, use_gpu, kind, loss_type

    def __call__(self, checkpoint, **_: Any) -> dict[str, float]:
        from rayreward.core.checkpoint import export_checkpoint
        from rayreward.run.eval_scores import eval_loss, eval_metrics, score_eval

        started = time.monotonic()
        with checkpoint.as_directory() as folder, tempfile.TemporaryDirectory(prefix="rayreward-ckpt-eval-") as tmp:
            model_dir = export_checkpoint(folder, os.path.join(tmp, "model"))
            scores = score_eval(model_dir, None, self.eval_ds, self.kind, self.use_gpu)
        metrics = {f"eval_{k}": v for k, v in eval_metrics(scores).items()}
        metrics["eval_loss"] = eval_loss(scores, self.loss_type)
        metrics["eval_seconds"] = round(time.monotonic() - started, 3)
        return metrics


def checkpoint_validation(eval_ds, scaling, kind: str = "pairs", loss_type: str = "bradley_terry"):
    """The ``ray.train.ValidationConfig`` of a run whose checkpoints are evaluated beside
    training (eval data of ``kind``), its task sized like one training worker (on a GPU
    when they have one)."""
    from ray.train import ValidationConfig

    resources = {"num_cpus": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["num_gpus"] = scaling.gpus_per_worker
    return ValidationConfig(fn=CheckpointEval(eval_ds, scaling.use_gpu, kind, loss_type),
                            ray_remote_kwargs=resources)
