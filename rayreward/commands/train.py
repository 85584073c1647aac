"""``rayreward train``: train a reward model on Ray (a running cluster or an embedded one)."""

from __future__ import annotations

import math
import os

from rayreward.commands._job_args import add_address_argument, add_job_arguments, load_job, start_ray

HELP = ("Train a reward model with Ray Train + DeepSpeed; with no arguments, the demo "
        "(tiny model, bundled data, 2 CPU workers, ZeRO-2).")


def add_arguments(parser) -> None:
    add_job_arguments(parser)
    add_address_argument(parser)


def run(args) -> int:
    import ray

    from rayreward.run.fit import fit

    # 1. Config, validated before anything starts.
    job, _ = load_job(args)
    if job is None:
        return 2
    # 2. Ray: the given cluster, or one embedded in this process bound to loopback.
    start_ray(args.address, embedded_cpus(job))
    _quiet_ray_data()
    # 3. Fit and export.
    try:
        outcome = fit(job)
    finally:
        ray.shutdown()
    metrics = outcome.metrics
    shown = {k: metrics[k] for k in ("step", "eval_accuracy", "eval_loss", "loss") if k in metrics}
    print("[rayreward] done: " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))
    print(f"[rayreward] model:   {outcome.model_dir}")
    print(f"[rayreward] metrics: {outcome.metrics_path}")
    return 0


def embedded_cpus(job) -> int:
    """Logical CPUs of the embedded Ray: the cores, or more when the job needs more.

    The training workers take ``num_workers * cpus_per_worker``; the tokenizer actors
    run before them (data is materialized first) but Ray Data's read and split tasks
    still need CPU slots while the workers hold theirs, so slots beyond the workers'
    are added (see STACK_NOTES: a 2-CPU Ray behind 2 one-CPU workers deadlocks). Ray
    pins each worker's torch threads to its cpus_per_worker, so the extra logical CPUs
    do not oversubscribe the cores with compute.
    """
    workers = math.ceil(job.scaling.num_workers * job.scaling.cpus_per_worker)
    tokenizers = math.ceil(job.data.tokenize_actors * job.data.tokenize_num_cpus)
    return max(os.cpu_count() or 1, workers + max(tokenizers, 2))


def _quiet_ray_data() -> None:
    # Ray Data's per-operator progress bars drown the training progress lines.
    import logging

    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
