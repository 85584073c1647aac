"""Ray Tune sweeps over any key of the job config: ``sweep_problems(job)``, ``run_sweep(job)``.

A sweep is one Tune experiment in ``<storage.path>/<storage.name>``. Each trial is a
function (``_trial``) that applies its sampled values to the job through
``apply_overrides`` (the command line's override path, so a trial and ``rayreward
train`` cannot drift apart), then builds and fits the ``TorchTrainer`` of
``rayreward train`` (``rayreward.run.fit.build_trainer``) with its checkpoints in
``<run>/trial_<id>/train``. Every checkpoint's metrics reach Tune through Ray's
``TuneReportCallback``; ASHA compares trials on ``tune.metric`` at step rungs and stops
the ones that trail. The trial function itself reserves no CPU (Ray Train V2 pattern):
the trainer's workers hold the CPUs/GPUs, each trainer all of its own or none, so
trials queue for resources and never deadlock.

Re-running with the same run name restores the experiment (``Tuner.restore``):
finished trials are kept, unfinished ones resume from their latest checkpoint.

The search space is checked before Ray starts: each key exists, and every trial
config the space can produce is valid (every combination of the discrete values, the
continuous distributions at their bounds).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

from rayreward.runtime import storage as _storage
from rayreward.config.tree import ConfigError, apply_overrides
from rayreward.job.config import (
    TOKENIZER_TRAIN_KEYS,
    tokenizer_spec,
    JobConfig, job_from_dict, save_eval_problems, storage_uri, to_dict,
)

# Trial configs checked one by one up to this many combinations; beyond it each key's
# values are checked with the other keys at their first value.
MAX_CHECKED_COMBINATIONS = 512
# The trial function only drives its TorchTrainer; Ray rejects a request of zero for
# every resource, hence a token amount of memory.
TRIAL_RESOURCES = {"cpu": 0, "memory": 2**20}
PLAN_FILE = "plan.json"


@dataclass
class SweepOutcome:
    """What a sweep left behind (paths are local paths or URIs under ``run_dir``).

    Attributes:
        run_dir: ``<storage.path>/<storage.name>``, the Tune experiment folder.
        trials: one row per trial (``_sweep_report.trial_rows``).
        best: the best trial's row, or None when no trial reported the metric.
        files: the written outputs: ``results_csv``, ``results_md``, ``best_config``,
            ``plot``, ``model_dir``, ``summary``.
        resumed: True when an earlier run of the sweep was restored.
        interrupted: True when the sweep stopped before every trial ended.
    """

    run_dir: str
    trials: list[dict[str, Any]]
    best: dict[str, Any] | None
    files: dict[str, str]
    resumed: bool
    interrupted: bool


def base_config(job: JobConfig) -> dict[str, Any]:
    """The job as a trial's starting point: the whole config, without the tune section."""
    data = to_dict(job)
    data.pop("tune")
    return data


def trial_dirname(trial) -> str:
    """Short, stable trial folders: ``trial_<id>``."""
    return f"trial_{trial.trial_id}"


def expected_trials(job: JobConfig) -> int:
    """Trials of the whole sweep: ``num_samples`` times every grid combination."""
    grid_kinds = ("grid", "choice") if job.tune.search_alg == "grid" else ("grid",)
    sizes = [len(args) for spec in job.tune.search_space.values() for kind, args in spec.items() if kind in grid_kinds]
    return job.tune.num_samples * math.prod(sizes)


def scheduler_max_t(job: JobConfig) -> int | None:
    """The last step ASHA schedules for: ``tune.scheduler.max_t``, else ``train.max_steps``."""
    if job.tune.scheduler.max_t:
        return job.tune.scheduler.max_t
    steps = job.train["max_steps"]
    return steps if steps > 0 else None


# -- checks, before Ray starts --------------------------------------------------------


def sweep_problems(job: JobConfig) -> list[str]:
    """Every problem of a sweep, before any trial runs.

    ``job`` is already valid as a job (``load_job_config``), its ``tune`` section's shape
    included. Checked here: each swept key exists (the closest valid key suggested),
    every trial config the search space can make is valid, the metric is reported at
    every checkpoint, and ASHA has room to act.
    """
    tune = job.tune
    base = base_config(job)
    problems = [p for key in tune.search_space for p in _key_problems(base, key, tune.search_space[key])]
    bad_values: set[tuple[str, str]] = set()
    if not problems:
        for key, spec in tune.search_space.items():
            problems += _value_problems(base, key, spec, bad_values)
    if job.storage.checkpoint_eval == "ray":
        # Tune schedules on the metrics each report carries; an evaluation that lands
        # later, beside training, is not one of them.
        problems.append("storage.checkpoint_eval: got 'ray' in a sweep; expected trainer (Tune schedules on "
                        f"each trial's {tune.metric} in the reports, as the workers evaluate)")
    if job.tune.suite() is not None:
        from rayreward.data.formats import DataFormatError
        from rayreward.data.sources import DataSourceError

        try:
            suite_slice(job)
        except (DataSourceError, DataFormatError) as exc:
            problems.append(str(exc) if str(exc).startswith("tune.suite_data") else f"tune.suite_data: {exc}")
    if problems and not bad_values:
        return problems
    seen: dict[str, str] = {}
    for values in _combinations(tune.search_space):
        if any((k, repr(v)) in bad_values for k, v in values.items()):
            continue  # reported above, value by value
        try:
            trial_job = job_from_dict(apply_overrides(base, values))
            found = _trial_rule_problems(trial_job)
        except ConfigError as exc:
            found = exc.problems
        for problem in found:
            seen.setdefault(problem, _assignments(values))
    problems += [f"tune.search_space: a trial with {where} is invalid: {problem}" for problem, where in seen.items()]
    lora_keys = [k for k in tune.search_space if k.startswith("lora.") and k != "lora.enabled"]
    if lora_keys and not job.lora.enabled and "lora.enabled" not in tune.search_space:
        problems.append(f"tune.search_space.{lora_keys[0]}: swept with lora.enabled=false, where it has no effect; "
                        "expected lora.enabled=true, or the key dropped from tune.search_space")
    if tune.scheduler.type == "asha":
        max_t = scheduler_max_t(job)
        if max_t is None:
            problems.append("tune.scheduler.max_t: got null with train.max_steps unset; expected train.max_steps "
                            "(the longest a trial may train) or tune.scheduler.max_t, so ASHA knows its last rung")
        elif "train.max_steps" in tune.search_space and not tune.scheduler.max_t:
            problems.append("tune.scheduler.max_t: got null with train.max_steps swept; expected the largest "
                            "train.max_steps of the search space")
        elif tune.scheduler.grace_period >= max_t:
            problems.append(f"tune.scheduler.grace_period: got {tune.scheduler.grace_period} steps with trials of "
                            f"{max_t} steps; expected fewer, or ASHA never stops a trial")
    return problems


def _key_problems(base: dict, key: str, spec: dict) -> list[str]:
    """An unknown (or job-managed) swept key: ``tune.search_space.<key>: unknown key; did you mean ...``."""
    first = _values(spec)[0]
    try:
        job_from_dict(apply_overrides(base, {key: first}))
    except ConfigError as exc:
        prefixes = [".".join(key.split(".")[: i + 1]) + ":" for i in range(key.count(".") + 1)]
        # Problems of the key itself; those of its values are the combinations' to report.
        # ("train: ..." is TrainingArguments' own check of the values.)
        return [f"tune.search_space.{p}" for p in exc.problems
                if any(p.startswith(x) for x in prefixes) and not p.startswith((f"{key}: got ", "train: "))]
    return []


def _value_problems(base: dict, key: str, spec: dict, bad_values: set[tuple[str, str]]) -> list[str]:
    """Each listed value (``choice``/``grid``) the key itself does not take, before any
    combination: ``tune.search_space.train.loss_type.choice: got 'pl'; expected one of ...``.
    Adds ``(key, repr(value))`` of each to ``bad_values``."""
    (kind, args), = spec.items()
    if kind not in ("choice", "grid"):
        return []
    problems = []
    for value in args:
        try:
            job_from_dict(apply_overrides(base, {key: value}))
        except ConfigError as exc:
            found = [f"tune.search_space.{key}.{kind}: {p[len(key) + 2:]}" for p in exc.problems
                     if p.startswith(f"{key}: got ")]
            if found:
                bad_values.add((key, repr(value)))
                problems += found
    return problems


def suite_slice(job: JobConfig) -> list:
    """The suite rows every trial scores at each checkpoint (``tune.suite_data``), or [].

    Raises:
        DataSourceError, DataFormatError: the data cannot be read or is not in the schema.
    """
    from rayreward.evaluation.suites import get_suite
    from rayreward.evaluation.suites.data import held_out_slice, load_rows
    from rayreward.evaluation.suites.runner import SuiteData

    name = job.tune.suite()
    if name is None:
        return []
    suite = get_suite(name)
    rows, where = load_rows(suite, job.tune.suite_data, field="tune.suite_data")
    part = held_out_slice(suite, rows, job.tune.suite_rows, seed=job.tune.seed or 0)
    return [SuiteData(name, part, f"{where}, {len(part)} of {len(rows)} rows")]


def _trial_rule_problems(job: JobConfig) -> list[str]:
    """What a trial needs beyond a valid job: the metric at every report."""
    metric, t = job.tune.metric, job.train
    if job.tune.suite() is not None:
        # Every checkpoint scores the suite slice (rayreward.run.suite_eval), at the steps that save.
        if t["save_strategy"] != "steps":
            return [f"tune.metric: got {metric!r}, scored when a trial saves a checkpoint, but "
                    f"train.save_strategy is {t['save_strategy']!r}; expected steps"]
        return []
    if not metric.startswith("eval_"):
        return []
    if t["eval_strategy"] != "steps" or not (job.data.eval or job.data.eval_split):
        return [f"tune.metric: got {metric!r} but the trials do not evaluate; expected train.eval_strategy=steps "
                "and data.eval or data.eval_split"]
    return save_eval_problems(job, f"(trials report to Tune at each checkpoint, with its latest {metric})")


def _values(spec: dict) -> list:
    """The values of a distribution that a check must cover."""
    (kind, args), = spec.items()
    if kind in ("choice", "grid"):
        return list(args)
    if kind == "randint":
        return [args[0], args[1] - 1]
    return list(args)


def _combinations(space: dict) -> list[dict[str, Any]]:
    keys = list(space)
    axes = [_values(space[k]) for k in keys]
    if math.prod(len(a) for a in axes) <= MAX_CHECKED_COMBINATIONS:
        return [dict(zip(keys, combo)) for combo in itertools.product(*axes)]
    first = {k: a[0] for k, a in zip(keys, axes)}
    return [{**first, k: v} for k, a in zip(keys, axes) for v in a]


def _assignments(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_show(v)}" for k, v in values.items())


def _show(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# -- Tune ------------------------------------------------------------------------------


def param_space(job: JobConfig) -> dict[str, Any]:
    """``search_space`` as Tune distributions, keyed by the dotted config keys."""
    from ray import tune

    grid_choices = job.tune.search_alg == "grid"
    space = {}
    for key, spec in job.tune.search_space.items():
        (kind, args), = spec.items()
        if kind == "grid" or (kind == "choice" and grid_choices):
            space[key] = tune.grid_search(list(args))
        elif kind == "choice":
            space[key] = tune.choice(list(args))
        elif kind == "loguniform":
            space[key] = tune.loguniform(*args)
        elif kind == "uniform":
            space[key] = tune.uniform(*args)
        else:
            space[key] = tune.randint(*args)
    return space


def _trial(config: dict[str, Any], base: dict[str, Any], run_dir: str, prepared=None, suites=()) -> None:
    """One trial: the job with the sampled values applied, trained by its own ``TorchTrainer``.

    ``prepared`` is the sweep's data, tokenized once on the driver, when no swept key
    changes it (``data.*``, ``model.*``); otherwise each trial builds its own. ``suites``
    is the slice of a suite each checkpoint scores when ``tune.metric`` is a suite score.
    """
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from rayreward.data import build_datasets
    from rayreward.run.fit import build_trainer
    from rayreward.tune import report as _sweep_report
    from rayreward.run.spec import run_spec

    # 1. Config: the sampled values through the command line's override path (the base
    # job's scaling.use_gpu was decided on the sweep's driver).
    job = job_from_dict(apply_overrides(base, config), check=False)
    trial_dir = _storage.join(run_dir, f"trial_{ray.tune.get_context().get_trial_id()}")
    # 2. Data, and the run spec; the results table compares the trial's last step with its step plan.
    own = prepared is None
    prepared = prepared or build_datasets(job.data, tokenizer_spec(job), job.train["attributes"])
    try:
        spec = run_spec(job, prepared)
        plan = spec.steps
        _storage.write_text(_storage.join(trial_dir, PLAN_FILE), json.dumps(
            {"max_steps": plan.max_steps, "steps_per_epoch": plan.steps_per_epoch, **prepared.metrics()}, indent=1))
        # 3. Trainer reporting each checkpoint's metrics to Tune; 4. fit (a restored trial
        # resumes from its latest checkpoint in trial_dir/train).
        callbacks = []
        if suites:
            from rayreward.run.suite_eval import SuiteMetrics

            callbacks.append(SuiteMetrics(suites, max_length=job.data.max_length))
        build_trainer(job, prepared, _sweep_report.TRIAL_RUN, trial_dir, callbacks=callbacks,
                      run_callbacks=[TuneReportCallback()], spec=spec).fit()
    finally:
        if own:  # the sweep's shared data is released by the sweep
            prepared.release()


# Where the trial lines of the sweep running in this process go (run_sweep sets it): a
# restored sweep's callback, unpickled from the saved experiment, writes there too.
_driver_print: Callable[[str], None] = print


def _say_on_driver(line: str) -> None:
    _driver_print(line)


def _trial_lines(print_fn: Callable[[str], None], keys: list[str], metric: str):
    """A Tune callback printing one line when a trial starts, and when it ends or fails."""
    from ray.tune import Callback

    class TrialLines(Callback):
        def __init__(self, say: Callable[[str], None]):
            self.print_fn = say

        def __getstate__(self):
            # Tune saves its callbacks with the experiment; the driver's console (open
            # files) is not part of it, and a restored sweep gets the new command's.
            return {k: v for k, v in self.__dict__.items() if k != "print_fn"}

        def __setstate__(self, state):
            self.__dict__.update(state, print_fn=_say_on_driver)

        def on_trial_start(self, iteration, trials, trial, **info):
            self.print_fn(f"[rayreward] trial {trial.trial_id} started: "
                          + _assignments({k: trial.config.get(k) for k in keys}))

        def on_trial_complete(self, iteration, trials, trial, **info):
            result = trial.last_result or {}
            value = result.get(metric)
            shown = f"{metric} {value:.4f}" if isinstance(value, (int, float)) else f"no {metric} reported"
            self.print_fn(f"[rayreward] trial {trial.trial_id} ended at step {result.get('step', '?')}: {shown}")

        def on_trial_error(self, iteration, trials, trial, **info):
            self.print_fn(f"[rayreward] trial {trial.trial_id} failed; its error is in {trial.path}/error.txt")

    return TrialLines(print_fn)


def sweep_name(job: JobConfig) -> str:
    """``storage.name``, else a new ``sweep-<date>-<time>`` (never the demo's ``demo``, which
    is `rayreward train`'s run)."""
    return job.storage.name or time.strftime("sweep-%Y%m%d-%H%M%S")


def run_sweep(job: JobConfig, print_fn: Callable[[str], None] = print, preflight: bool = True) -> SweepOutcome:
    """Runs (or resumes) the sweep of ``job.tune`` on the Ray cluster this process is connected to.

    Args:
        job: a validated ``JobConfig`` whose ``sweep_problems`` are empty.
        print_fn: where the driver's lines go.
        preflight: check the job's data, model and storage first (``rayreward tune`` does
            it before Ray starts, and passes False).

    Returns:
        A ``SweepOutcome``; with ``interrupted`` the outputs are not written (re-run to
        resume).

    Raises:
        ConfigError: ``sweep_problems(job)`` is not empty.
        PreflightError: the job's inputs have problems.

    Example:
        >>> ray.init(address="local", num_cpus=6)
        >>> outcome = run_sweep(load_job_config("examples/configs/sweep.yaml"))
        >>> outcome.best["params"], outcome.files["best_config"]
    """
    from ray import tune

    from rayreward.tune import report as _sweep_report

    global _driver_print
    _driver_print = print_fn
    # 1. Config: checked in full, then the experiment's place.
    problems = sweep_problems(job)
    if problems:
        raise ConfigError(problems, what="sweep")
    from rayreward.run.fit import resolve_scaling_on_cluster, run_preflight

    if preflight:
        run_preflight(job, print_fn, search_space=job.tune.search_space)

    t = job.tune
    job = resolve_scaling_on_cluster(job, print_fn)
    name, storage = sweep_name(job), storage_uri(job)
    job = dataclasses.replace(job, storage=dataclasses.replace(job.storage, name=name))
    fs, storage_path = _storage.filesystem(storage) if _storage.is_uri(storage) else (None, storage)
    run_dir = _storage.join(storage, name)
    keys = list(t.search_space)

    # 2. Data: tokenized once for every trial, unless a swept key changes it.
    prepared = None
    if not any(k.split(".", 1)[0] in ("data", "model") or k in TOKENIZER_TRAIN_KEYS for k in keys):
        from rayreward.data import build_datasets

        prepared = build_datasets(job.data, tokenizer_spec(job), job.train["attributes"])
        print_fn(f"[rayreward] data: {prepared.num_train_pairs} training {prepared.unit}, tokenized once for all "
                 "trials")
    suites = suite_slice(job)
    if suites:
        print_fn(f"[rayreward] trials are ranked by {t.metric} on {suites[0].where}, scored at every checkpoint")
    trainable = tune.with_resources(
        tune.with_parameters(_trial, base=base_config(job), run_dir=run_dir, prepared=prepared, suites=suites),
        TRIAL_RESOURCES)

    # 3. Tuner: a new experiment, or the one of an earlier run with this name.
    resumed = tune.Tuner.can_restore(run_dir, storage_filesystem=fs)
    if resumed:
        print_fn(f"[rayreward] resuming sweep {name} from {run_dir} (finished trials are kept)")
        tuner = tune.Tuner.restore(run_dir, trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=fs)
    else:
        print_fn(f"[rayreward] sweep {name}: {t.num_samples} sample(s) of {', '.join(keys)}; "
                 f"{t.max_concurrent_trials} at once; {t.scheduler.type} on {t.metric} ({t.mode}); in {run_dir}")
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(job),
            tune_config=tune.TuneConfig(
                metric=t.metric, mode=t.mode, num_samples=t.num_samples, scheduler=_scheduler(job),
                # The built-in random/grid search; it takes the concurrency limit itself
                # (TuneConfig's max_concurrent_trials is ignored beside a generator).
                search_alg=tune.search.BasicVariantGenerator(random_state=t.seed,
                                                             max_concurrent=t.max_concurrent_trials),
                trial_dirname_creator=trial_dirname, trial_name_creator=trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=name, storage_path=storage_path, storage_filesystem=fs,
                callbacks=[_trial_lines(print_fn, keys, t.metric)],
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )

    # 4. Fit: every trial to its end, its early stop or its error.
    try:
        grid = tuner.fit()
    finally:
        if prepared is not None:
            prepared.release()
    # Every trial with its status and config (a trial that never reported has no config
    # in its Result), from the experiment state Tune saved at the end or interrupt.
    analysis = tune.ExperimentAnalysis(os.path.join(storage_path, name) if fs else run_dir, storage_filesystem=fs)
    trials = {trial.trial_id: trial for trial in analysis.trials}
    # Interrupted: a trial not ended, or one the search had yet to create.
    interrupted = (len(trials) < expected_trials(job)
                   or any(trial.status not in ("TERMINATED", "ERROR") for trial in trials.values()))
    rows = _sweep_report.trial_rows(grid, trials, keys, t.metric, t.mode, storage)
    if interrupted:
        print_fn(f"[rayreward] sweep {name} interrupted; re-run the same command to resume it")
        return SweepOutcome(run_dir, rows, None, {}, resumed, True)

    # 5. Report: tables, plot, best config, best model.
    best, files = _sweep_report.write_report(job, base_config(job), rows, run_dir, keys, print_fn)
    return SweepOutcome(run_dir, rows, best, files, resumed, False)


def _scheduler(job: JobConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = job.tune.scheduler
    if s.type == "none":
        return FIFOScheduler()
    # Rungs in optimizer steps (not reports): a trial resumed from a checkpoint keeps
    # its place on them.
    return ASHAScheduler(time_attr="step", max_t=scheduler_max_t(job), grace_period=s.grace_period,
                         reduction_factor=s.reduction_factor)
