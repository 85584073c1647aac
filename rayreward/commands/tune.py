"""``rayreward tune``: a Ray Tune sweep over any config keys (the ``tune:`` section)."""

from __future__ import annotations

import math
import os

from rayreward.commands._job_args import add_address_argument, add_job_arguments, load_job, preflight_job

HELP = ("Sweep hyperparameters with Ray Tune (ASHA early stopping): each trial is a `rayreward train` "
        "run with sampled overrides; prints and writes the results, the best config, a plot and the best model. "
        "Re-run with the same storage.name to resume.")


def add_arguments(parser) -> None:
    from rayreward.runtime.console import add_console_arguments

    add_job_arguments(parser)
    add_address_argument(parser)
    add_console_arguments(parser)


def run(args) -> int:
    import dataclasses

    from rayreward.job.config import storage_uri
    from rayreward.config.tree import ConfigError
    from rayreward.runtime import storage as _storage
    from rayreward.runtime.console import Console, log_path_for
    from rayreward.runtime.ray_session import ray_session
    from rayreward.tune.sweep import run_sweep, sweep_name, sweep_problems

    # 1. Config and search space, checked before anything starts.
    job, _ = load_job(args)
    problems = sweep_problems(job)
    if problems:
        raise ConfigError(problems, args.config, what="sweep")
    preflight_job(args, job, search_space=job.tune.search_space)
    # The sweep's name is fixed now: its log goes in its folder, and a re-run resumes it.
    name = sweep_name(job)
    job = dataclasses.replace(job, storage=dataclasses.replace(job.storage, name=name))
    # 2. Console and Ray: the given cluster, or one embedded in this process bound to
    # loopback. The trials' worker logs stay on the cluster (each trial's folder has
    # them); Tune's trial table and Ray's output go to the sweep's log, the terminal
    # shows one line per trial event and the results.
    # 3. Sweep, report, export; an embedded Ray is stopped with every process it started.
    console = Console(log_path_for(_storage.join(storage_uri(job), name), name), verbose=args.verbose)
    with console, ray_session(args.address, num_cpus=embedded_cpus(job), log_to_driver=False):
        outcome = run_sweep(job, print_fn=console.say, preflight=False)
    return 130 if outcome.interrupted else 0


def embedded_cpus(job) -> int:
    """Logical CPUs of the embedded Ray: room for every concurrent trial's workers and
    tokenizer tasks at once, plus a slot for Ray Data's read tasks.

    Concurrent trials may tokenize while others train; without the extra slots a trial
    would wait for CPUs held by the workers of another. Ray pins each
    worker's torch threads to its cpus_per_worker, so logical CPUs beyond the cores do
    not oversubscribe them with compute.
    """
    s, d = job.scaling, job.data
    per_trial = math.ceil(s.max_workers * s.cpus_per_worker) + math.ceil(d.tokenize_actors * d.tokenize_num_cpus)
    return max(os.cpu_count() or 1, job.tune.max_concurrent_trials * per_trial + 1)


def validate_tune_section(section, job=None) -> list[str]:
    """Problems of a ``tune:`` section (``rayreward check``), with ``job`` the rest of the file:
    its shape, then the sweep checks of ``rayreward.tune.sweep.sweep_problems``."""
    import dataclasses

    from rayreward.config.tree import build
    from rayreward.job.tune_section import TuneSection
    from rayreward.tune.sweep import sweep_problems

    problems: list[str] = []
    tune = build(TuneSection, section, "tune", problems)
    problems += tune.validate() if not problems else []
    if problems or job is None:
        return problems
    return sweep_problems(dataclasses.replace(job, tune=tune))
