"""``rayreward train``: train a reward model on Ray (a running cluster or an embedded one)."""

from __future__ import annotations

import math
import os

from rayreward.commands._job_args import add_address_argument, add_job_arguments, load_job, preflight_job

HELP = ("Train a reward model with Ray Train + DeepSpeed; with no arguments, the demo "
        "(tiny model, bundled data, 2 CPU workers, ZeRO-2).")


def add_arguments(parser) -> None:
    from rayreward.runtime.console import add_console_arguments

    add_job_arguments(parser)
    add_address_argument(parser)
    add_console_arguments(parser)


def run(args) -> int:
    import dataclasses

    from rayreward.job.config import run_name, storage_uri
    from rayreward.run.fit import fit
    from rayreward.runtime import storage as _storage
    from rayreward.runtime.console import Console, log_path_for
    from rayreward.runtime.ray_session import ray_session

    # 1. Config, validated before anything starts.
    job, _ = load_job(args)
    preflight_job(args, job)
    # The run's name is fixed now, so that an interrupted run can be resumed by name.
    name = run_name(job)
    job = dataclasses.replace(job, storage=dataclasses.replace(job.storage, name=name))
    run_dir = _storage.join(storage_uri(job), name)
    # 2. Console and Ray: the given cluster, or one embedded in this process bound to
    # loopback; Ray's, DeepSpeed's and transformers' output goes to the run's log.
    console = Console(log_path_for(run_dir, name), verbose=args.verbose)
    try:
        with console, ray_session(args.address, num_cpus=embedded_cpus(job)):
            _quiet_ray_data()
            # 3. Fit and export.
            if console.redirected:
                from ray.util.queue import Queue

                events = Queue(actor_options={"num_cpus": 0})
                with console.follow(events):
                    outcome = fit(job, print_fn=console.say, progress=events, preflight=False)
            else:
                outcome = fit(job, preflight=False)
    except KeyboardInterrupt:
        _say_how_to_resume(args, job, run_dir)
        return 130
    metrics = outcome.metrics
    shown = {k: metrics[k] for k in ("step", "eval_accuracy", "eval_loss", "loss") if k in metrics}
    print("[rayreward] done: " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))
    print(f"[rayreward] model:   {outcome.model_dir}")
    print(f"[rayreward] metrics: {outcome.metrics_path}")
    return 0


def _say_how_to_resume(args, job, run_dir: str) -> None:
    import shlex
    import sys

    from rayreward.run.resume import resume_point

    point = resume_point(run_dir)
    where = (f"the run resumes from its last checkpoint, {point.checkpoint}" if point.checkpoint
             else "no checkpoint was recorded yet: a re-run starts over")
    command = ["rayreward", "train"] + (["--config", args.config] if args.config else []) + list(args.overrides)
    if args.address:
        command += ["--address", args.address]
    if not any(o.startswith("storage.name=") for o in args.overrides) and not _named_in_file(args.config):
        command.append(f"storage.name={job.storage.name}")
    print(f"\n[rayreward] interrupted: {where}", file=sys.stderr)
    if point.not_taken:
        print(f"[rayreward] not taken: {', '.join(point.not_taken)} (saved as the run stopped, before Ray "
              f"recorded it; its steps are redone)", file=sys.stderr)
    print(f"[rayreward] resume with: {shlex.join(command)}", file=sys.stderr)


def _named_in_file(config: str | None) -> bool:
    if not config:
        return False
    from rayreward.config.tree import load_yaml

    return bool((load_yaml(config) or {}).get("storage", {}).get("name"))


def embedded_cpus(job) -> int:
    """Logical CPUs of the embedded Ray: the cores, or more when the job needs more.

    The training workers take ``num_workers * cpus_per_worker``; the tokenizer tasks
    run before them (data is materialized first) but Ray Data's read and split tasks
    still need CPU slots while the workers hold theirs, so slots beyond the workers'
    are added (a 2-CPU Ray behind 2 one-CPU workers was seen to deadlock). Ray
    pins each worker's torch threads to its cpus_per_worker, so the extra logical CPUs
    do not oversubscribe the cores with compute.
    """
    workers = math.ceil(job.scaling.max_workers * job.scaling.cpus_per_worker)
    tokenizers = math.ceil(job.data.tokenize_actors * job.data.tokenize_num_cpus)
    return max(os.cpu_count() or 1, workers + max(tokenizers, 2))


def _quiet_ray_data() -> None:
    # Ray Data's per-operator progress bars drown the training progress lines.
    import logging

    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
