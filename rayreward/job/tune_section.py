"""The ``tune:`` section of the job config: what a sweep searches, and how.

Its defaults live here (``--help`` prints them). ``TuneSection.validate`` checks the
section's own shape (each distribution's arguments included); whether the swept keys
exist, and whether every trial config they make is valid, is ``rayreward.tune.sweep``'s
check, which needs the rest of the job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rayreward.data.config import is_int, is_number
from rayreward.job.tree import type_problems

SCHEDULERS = ("asha", "none")
SEARCH_ALGS = ("random", "grid")
DISTRIBUTIONS = {
    "loguniform": "[low, high] with 0 < low < high (sampled on a log scale)",
    "uniform": "[low, high] with low < high",
    "randint": "[low, high] integers with low < high (high excluded)",
    "choice": "a non-empty list of values (one drawn per trial)",
    "grid": "a non-empty list of values (every one tried, times num_samples)",
}
# Sections a trial cannot sweep: the sweep owns the storage of its trials and the tune
# section itself.
UNSWEEPABLE = {
    "tune": "the tune section configures the sweep itself",
    "storage": "each trial stores under the sweep's folder (storage.path/storage.name/trial_*)",
}


def _default_search_space() -> dict[str, Any]:
    return {
        "train.learning_rate": {"loguniform": [1.0e-4, 1.0e-2]},
        "lora.r": {"choice": [4, 8, 16]},
        # Margin usage: whether the data's margin column is subtracted in the pairwise loss.
        "train.use_margin": {"choice": [True, False]},
    }


@dataclass
class SchedulerSection:
    """The trial scheduler: ASHA stops trials whose metric trails the others' at a rung."""

    type: str = field(default="asha", metadata={"help": "asha (early stopping) or none (every trial runs to the end)."})
    grace_period: int = field(
        default=50, metadata={"help": "Optimizer steps a trial trains before ASHA may stop it (its first rung)."}
    )
    reduction_factor: float = field(
        default=2, metadata={"help": "ASHA keeps the best 1/reduction_factor of the trials at each rung; rungs are "
                                     "grace_period x reduction_factor^k steps."}
    )
    max_t: int | None = field(
        default=None, metadata={"help": "The last step ASHA schedules for; null takes train.max_steps (then "
                                        "required)."}
    )

    def validate(self) -> list[str]:
        problems = type_problems(self, "tune.scheduler")
        if self.type not in SCHEDULERS:
            problems.append(f"tune.scheduler.type: got {self.type!r}; expected one of {', '.join(SCHEDULERS)}")
        if is_int(self.grace_period) and self.grace_period < 1:
            problems.append(f"tune.scheduler.grace_period: got {self.grace_period}; expected a positive number of steps")
        if is_number(self.reduction_factor) and self.reduction_factor <= 1:
            problems.append(f"tune.scheduler.reduction_factor: got {self.reduction_factor}; expected a number above 1")
        if is_int(self.max_t) and self.max_t < 1:
            problems.append(f"tune.scheduler.max_t: got {self.max_t}; expected a positive number of steps or null")
        return problems


@dataclass
class TuneSection:
    """A Ray Tune sweep (``rayreward tune``); ignored by ``rayreward train``."""

    metric: str = field(
        default="eval_accuracy",
        metadata={"help": "Reported metric that ranks trials (eval_accuracy, eval_loss, ...), or a benchmark suite's "
                          "score such as rewardbench2/overall or rm-bench/hard (<suite>/overall or /<section>; needs "
                          "tune.suite_data)."},
    )
    mode: str = field(default="max", metadata={"help": "max or min: which values of the metric are better."})
    num_samples: int = field(
        default=8, metadata={"help": "Trials drawn from the search space; grid values multiply it."}
    )
    max_concurrent_trials: int = field(
        default=2, metadata={"help": "Trials running at once; each reserves scaling.num_workers workers."}
    )
    scheduler: SchedulerSection = field(default_factory=SchedulerSection, metadata={"help": "Early stopping."})
    search_alg: str = field(
        default="random",
        metadata={"help": "Ray Tune's built-in search: random (choice drawn per trial, grid enumerated) or grid "
                          "(choice enumerated as well). Continuous distributions are sampled either way."},
    )
    seed: int | None = field(default=None, metadata={"help": "Seed of the sampling; null draws differently each sweep."})
    ensemble_top_k: int = field(
        default=0, metadata={"help": "Also export the best k trials' models as an ensemble folder "
                                     "(<sweep>/ensemble) that `rayreward serve --model` takes; 0: none."}
    )
    suite_data: str | None = field(
        default=None,
        metadata={"help": "For a suite metric: the suite's data (a file or folder in its public schema, or a hub id "
                          "in the local cache); each trial scores a fixed slice of it at every checkpoint."},
    )
    suite_rows: int = field(
        default=200, metadata={"help": "Rows of tune.suite_data in that slice (the same random rows for every "
                                       "trial); 0: every row."}
    )
    search_space: dict = field(
        default_factory=_default_search_space,
        metadata={"help": "Dotted config key -> {distribution: args}; distributions: "
                          + "; ".join(f"{k} {v}" for k, v in DISTRIBUTIONS.items())
                          + ". Replaces the default space as a whole."},
    )

    def validate(self) -> list[str]:
        problems = type_problems(self, "tune")
        if isinstance(self.scheduler, SchedulerSection):
            problems += self.scheduler.validate()
        if isinstance(self.metric, str) and not self.metric.strip():
            problems.append("tune.metric: got ''; expected a reported metric such as eval_accuracy")
        if self.mode not in ("max", "min"):
            problems.append(f"tune.mode: got {self.mode!r}; expected max or min")
        for name in ("num_samples", "max_concurrent_trials"):
            value = getattr(self, name)
            if is_int(value) and value < 1:
                problems.append(f"tune.{name}: got {value}; expected a positive integer")
        problems += self._suite_problems()
        if is_int(self.ensemble_top_k) and self.ensemble_top_k < 0:
            problems.append(f"tune.ensemble_top_k: got {self.ensemble_top_k}; expected 0 (none) or a positive integer")
        if self.search_alg not in SEARCH_ALGS:
            problems.append(f"tune.search_alg: got {self.search_alg!r}; expected one of {', '.join(SEARCH_ALGS)}")
        if isinstance(self.search_space, dict):
            if not self.search_space:
                problems.append("tune.search_space: got {}; expected at least one key to sweep")
            for key, spec in self.search_space.items():
                problems += distribution_problems(str(key), spec)
        return problems


    def suite(self) -> str | None:
        """The suite named by ``metric`` (``rewardbench2/overall`` -> ``rewardbench2``), or None."""
        from rayreward.evaluation.suites import SUITES

        head = self.metric.split("/", 1)[0] if isinstance(self.metric, str) else ""
        return head if head in SUITES and "/" in self.metric else None

    def _suite_problems(self) -> list[str]:
        from rayreward.evaluation.suites.runner import metric_names

        problems = []
        if is_int(self.suite_rows) and self.suite_rows < 0:
            problems.append(f"tune.suite_rows: got {self.suite_rows}; expected 0 (every row) or a positive integer")
        suite = self.suite()
        if suite is None:
            if self.suite_data is not None:
                problems.append(f"tune.suite_data: set, but tune.metric {self.metric!r} is not a suite score; "
                                "expected tune.metric such as rewardbench2/overall, or suite_data removed")
            return problems
        names = metric_names(suite)
        if self.metric not in names:
            problems.append(f"tune.metric: got {self.metric!r}; expected one of {', '.join(names)}")
        if self.mode != "max":
            problems.append(f"tune.mode: got {self.mode!r} with the suite score {self.metric}; expected max")
        if not self.suite_data:
            problems.append(f"tune.suite_data: got null with tune.metric {self.metric}; expected the {suite} data "
                            "(a file or folder in its public schema) that each trial scores a slice of")
        return problems


def distribution_problems(key: str, spec: Any) -> list[str]:
    """The problems of one ``search_space`` entry (its key's section, its distribution)."""
    where = f"tune.search_space.{key}"
    section = key.split(".", 1)[0]
    if section in UNSWEEPABLE:
        return [f"{where}: cannot be swept; {UNSWEEPABLE[section]}"]
    if "." not in key or not all(key.split(".")):
        return [f"{where}: expected a dotted config key such as train.learning_rate"]
    if not isinstance(spec, dict) or len(spec) != 1:
        return [f"{where}: got {spec!r}; expected one distribution, e.g. {{loguniform: [1.0e-5, 1.0e-3]}} "
                f"(one of {', '.join(DISTRIBUTIONS)})"]
    (kind, args), = spec.items()
    if kind not in DISTRIBUTIONS:
        import difflib

        match = difflib.get_close_matches(str(kind), DISTRIBUTIONS, n=1)
        hint = f"did you mean {match[0]!r}?" if match else f"expected one of {', '.join(DISTRIBUTIONS)}"
        return [f"{where}: unknown distribution {kind!r}; {hint}"]
    expected = f"{where}.{kind}: got {args!r}; expected {DISTRIBUTIONS[kind]}"
    if kind in ("choice", "grid"):
        return [] if isinstance(args, list) and args else [expected]
    if not (isinstance(args, list) and len(args) == 2 and all(is_number(a) and math.isfinite(a) for a in args)):
        return [expected]
    low, high = args
    if kind == "randint" and not (is_int(low) and is_int(high)):
        return [expected]
    if low >= high or (kind == "loguniform" and low <= 0):
        return [expected]
    return []
