"""The job config: one typed tree, mirrored by YAML, with dotted overrides.

Sections: ``model``, ``data`` (``rayreward.data.DataConfig``), ``lora``, ``train`` (any
``RewardConfig`` field), ``deepspeed``, ``scaling``, ``storage``, ``failure``, ``tune`` (a
sweep, ``rayreward.tune.sweep``). Every default lives in the dataclasses below (the demo's training defaults in
``TRAIN_DEFAULTS``); ``load_job_config`` reads YAML, applies overrides and validates,
reporting every problem at once before Ray starts. Values derived from the config
(step counts, the run name, the ``RewardConfig``) are computed by functions here and
never written back into it.

Example:
    >>> job = load_job_config("examples/configs/tiny_cpu.yaml", ["train.learning_rate=2e-5", "lora.r=16"])
    >>> job.train["learning_rate"], job.lora.r
    (2e-05, 16)
"""

from __future__ import annotations

import dataclasses
import os
import time
import typing
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from rayreward.job.tree import ConfigError, apply_overrides, build, field_docs, load_yaml, unknown_key
from rayreward.job.sections import (
    DeepSpeedSection,
    FailureSection,
    LoraSection,
    ModelSection,
    ScalingSection,
    StorageSection,
)
from rayreward.job.tune_section import TuneSection
from rayreward.data.config import DataConfig
from rayreward.data.tokenizer import SAMPLE_DATA_DIR

__all__ = [
    "JobConfig", "ConfigError", "load_job_config", "job_from_dict", "apply_overrides", "validate",
    "reward_config_kwargs", "step_plan", "run_name", "storage_uri", "to_dict", "help_text",
]

# The demo's training settings; a `train:` section overlays these key by key. Chosen so
# that `rayreward` with no arguments reaches > 0.8 eval accuracy on the bundled data in
# a few minutes on 2 CPU cores.
TRAIN_DEFAULTS: dict[str, Any] = {
    "num_train_epochs": 3,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 32,
    "learning_rate": 2e-3,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.05,
    "weight_decay": 0.0,
    "logging_steps": 10,
    "eval_strategy": "steps",
    "eval_steps": 50,
    "save_strategy": "steps",
    "save_steps": 50,
    "activation_checkpointing": False,
    "report_to": "none",
    "seed": 42,
}

# RewardConfig fields the job sets itself; naming them under `train` is an error that
# points at the key to use instead.
MANAGED_TRAIN_FIELDS = {
    "output_dir": "the run folder is storage.path/storage.name; set those",
    "deepspeed": "use the deepspeed section (stage, offload_*, or config: a JSON path)",
    "max_length": "set data.max_length (the data pipeline tokenizes)",
    "length_policy": "set data.length_policy",
    "save_total_limit": "set storage.num_to_keep",
    "resume_from_checkpoint": "re-run with the same storage.name to resume its latest checkpoint",
    "load_best_model_at_end": "set storage.checkpoint_score_attribute; the best checkpoint is exported",
    "use_cpu": "set scaling.use_gpu",
    "local_rank": "Ray Train sets the ranks",
}


def _default_data() -> DataConfig:
    return DataConfig(train=str(SAMPLE_DATA_DIR / "train.jsonl"), eval=str(SAMPLE_DATA_DIR / "eval.jsonl"))


@dataclass
class JobConfig:
    """A whole training job. Build it with ``load_job_config`` or ``job_from_dict``."""

    model: ModelSection = field(default_factory=ModelSection, metadata={"help": "The model."})
    data: DataConfig = field(default_factory=_default_data, metadata={"help": "The preference pairs."})
    lora: LoraSection = field(default_factory=LoraSection, metadata={"help": "LoRA adapters."})
    train: dict = field(
        default_factory=lambda: dict(TRAIN_DEFAULTS),
        metadata={"help": "Any RewardConfig (transformers.TrainingArguments) field; overlays the demo defaults."},
    )
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection, metadata={"help": "DeepSpeed ZeRO."})
    scaling: ScalingSection = field(default_factory=ScalingSection, metadata={"help": "Workers."})
    storage: StorageSection = field(default_factory=StorageSection, metadata={"help": "Checkpoints and outputs."})
    failure: FailureSection = field(default_factory=FailureSection, metadata={"help": "Fault tolerance."})
    tune: TuneSection = field(
        default_factory=TuneSection,
        metadata={"help": "A hyperparameter sweep (rayreward tune); rayreward train ignores it."},
    )


SECTIONS = tuple(f.name for f in dataclasses.fields(JobConfig))


def job_from_dict(data: Mapping[str, Any], source: str | None = None, check: bool = True) -> JobConfig:
    """Builds and validates a ``JobConfig`` from a nested mapping (YAML's shape).

    ``check=False`` skips the value checks (not the unknown keys): for a config that
    was validated on the driver and is rebuilt on a worker, where local paths such as
    ``deepspeed.config`` need not exist.

    Raises:
        ConfigError: listing every problem (unknown keys with the closest valid key,
            wrong types, values out of range, inconsistent sections).
    """
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise ConfigError([f"config: got {data!r}; expected a mapping of sections"], source)
    data = dict(data)
    train = data.pop("train", None) or {}
    if not isinstance(train, Mapping):
        problems.append(f"train: got {train!r}; expected a mapping of RewardConfig fields")
        train = {}
    user_data = data.pop("data", None) or {}
    job = build(JobConfig, data, "", problems)
    # `data:` overlays the demo's data key by key, but a job naming its own training
    # pairs does not inherit the demo's eval file.
    base = dataclasses.asdict(_default_data())
    if isinstance(user_data, Mapping) and "train" in user_data:
        base["eval"] = None
    job.data = build(DataConfig, {**base, **user_data} if isinstance(user_data, Mapping) else user_data, "data", problems)
    job.train = {**TRAIN_DEFAULTS, **train}
    if check:
        problems += validate(job)
    if problems:
        raise ConfigError(problems, source)
    return job


def load_job_config(path: str | None = None, overrides: Iterable[str] | Mapping[str, Any] = ()) -> JobConfig:
    """Reads a YAML job config (or starts from the defaults), applies overrides, validates.

    Args:
        path: a YAML file mirroring ``JobConfig``; None starts from the demo defaults.
        overrides: dotted ``key=value`` strings or a mapping (see ``apply_overrides``).

    Returns:
        The validated ``JobConfig``.

    Raises:
        ConfigError: every problem found, one per line.
    """
    base = load_yaml(path) if path else {}
    return job_from_dict(apply_overrides(base, overrides), source=path)


def validate(job: JobConfig) -> list[str]:
    """Every problem of a built ``JobConfig``: per section, then across sections."""
    problems: list[str] = []
    for name in SECTIONS:
        section = getattr(job, name)
        if hasattr(section, "validate"):
            problems += section.validate()
    train_problems = _train_problems(job.train)
    problems += train_problems
    if not train_problems:
        problems += _cross_problems(job)
    if not problems:
        problems += _reward_config_problems(job)
    return problems


def _train_problems(train: Mapping[str, Any]) -> list[str]:
    from rayreward.core.config import RewardConfig

    known = {f.name: f for f in dataclasses.fields(RewardConfig) if f.init}
    hints = typing.get_type_hints(RewardConfig)
    problems = []
    for key, value in train.items():
        if key in MANAGED_TRAIN_FIELDS:
            problems.append(f"train.{key}: set by the job; {MANAGED_TRAIN_FIELDS[key]}")
        elif key not in known:
            problems.append(unknown_key(f"train.{key}", key, known))
        elif not _loosely_matches(value, hints[key]):
            problems.append(f"train.{key}: got {value!r}; expected {_describe_hint(hints[key])}")
    return problems


def _reward_config_problems(job: JobConfig) -> list[str]:
    """What only TrainingArguments knows (enum values, option combinations)."""
    from rayreward.core.config import RewardConfig

    try:
        # use_cpu: the check must not depend on the GPUs of the machine running it.
        RewardConfig(**{**reward_config_kwargs(job, os.devnull, max_steps=1, deepspeed=None), "use_cpu": True})
    except (ValueError, TypeError) as exc:
        return [f"train: {exc}"]
    return []


def _cross_problems(job: JobConfig) -> list[str]:
    t, problems = job.train, []
    has_eval = bool(job.data.eval) or bool(job.data.eval_split)
    eval_strategy, save_strategy = str(t.get("eval_strategy", "no")), str(t.get("save_strategy", "steps"))
    if t.get("bf16") and t.get("fp16"):
        problems.append("train.fp16: got true with train.bf16=true; expected at most one of them")
    if t.get("fp16") and not job.scaling.use_gpu:
        problems.append("train.fp16: got true with scaling.use_gpu=false; expected bf16 or fp32 on CPU workers")
    if save_strategy != "steps":
        problems.append(f"train.save_strategy: got {save_strategy!r}; expected 'steps' (the Ray Data stream is one "
                        "Trainer epoch, so checkpoints are counted in steps)")
    if eval_strategy not in ("steps", "no"):
        problems.append(f"train.eval_strategy: got {eval_strategy!r}; expected 'steps' or 'no'")
    if eval_strategy != "no" and not has_eval:
        problems.append(f"train.eval_strategy: got {eval_strategy!r} but there is no eval data; expected data.eval "
                        "or data.eval_split to be set, or train.eval_strategy=no")
    attribute = job.storage.checkpoint_score_attribute
    if isinstance(attribute, str) and attribute:
        if attribute.startswith("eval_") and (eval_strategy != "steps" or not has_eval):
            problems.append(f"storage.checkpoint_score_attribute: got {attribute!r} without evaluation; expected "
                            "train.eval_strategy=steps and eval data")
        else:
            save_steps, eval_steps = t.get("save_steps", 500), t.get("eval_steps") or t.get("logging_steps", 500)
            if attribute.startswith("eval_") and save_steps % eval_steps:
                problems.append(f"train.save_steps: got {save_steps} with train.eval_steps={eval_steps}; expected a "
                                f"multiple of eval_steps so each checkpoint's {attribute} is current")
    if not job.data.materialize and t.get("max_steps", -1) <= 0:
        problems.append("train.max_steps: got no step count with data.materialize=false; expected a positive "
                        "integer (streamed data has no known length)")
    return problems


def _loosely_matches(value, hint) -> bool:
    from rayreward.job.tree import _matches

    args = typing.get_args(hint) or (hint,)
    # Enum-typed fields also take their string values; TrainingArguments checks those.
    if any(isinstance(a, type) and issubclass(a, str) and a is not str for a in args):
        return isinstance(value, str) or value is None and type(None) in args
    if any(a in (dict, str) or typing.get_origin(a) in (dict, list) for a in args) and isinstance(value, (dict, str)):
        return True
    return _matches(value, hint)


def _describe_hint(hint) -> str:
    from rayreward.job.tree import _describe

    return _describe(hint)


# -- values derived from a config (computed here, never stored back) ---------------


def step_plan(job: JobConfig, num_train_pairs: int | None):
    """The optimizer steps of a run (``rayreward.data.StepPlan``), from the pair count,
    workers, batch size, accumulation and epochs; ``train.max_steps > 0`` wins."""
    from rayreward.data import plan_steps

    t = job.train
    return plan_steps(
        num_train_pairs,
        num_workers=job.scaling.num_workers,
        per_worker_batch_size=t.get("per_device_train_batch_size", 8),
        gradient_accumulation_steps=t.get("gradient_accumulation_steps", 1),
        num_epochs=float(t.get("num_train_epochs", 3.0)),
        max_steps=t.get("max_steps", -1),
        drop_last=bool(t.get("dataloader_drop_last", False)),
    )


def reward_config_kwargs(job: JobConfig, output_dir: str, max_steps: int, deepspeed: dict | None) -> dict[str, Any]:
    """The ``RewardConfig`` arguments of one worker: ``train`` plus what the job manages."""
    return {
        **job.train,
        "output_dir": output_dir,
        "max_steps": max_steps,
        "max_length": job.data.max_length,
        "length_policy": job.data.length_policy,
        "deepspeed": deepspeed,
        "use_cpu": not job.scaling.use_gpu,
        "save_total_limit": None,
        # Progress lines come from rayreward's own rank-0 callback (rate and ETA).
        "disable_tqdm": True,
    }


def run_name(job: JobConfig) -> str:
    return job.storage.name or time.strftime("reward-%Y%m%d-%H%M%S")


def storage_uri(job: JobConfig) -> str:
    """``storage.path`` as Ray needs it: a URI, or an absolute local path."""
    path = job.storage.path
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def to_dict(job: JobConfig) -> dict[str, Any]:
    return dataclasses.asdict(job)


def help_text() -> str:
    """Every config key with its default and documentation, for ``--help``."""
    lines = ["config keys (YAML sections, or dotted overrides such as train.learning_rate=2e-5):"]
    for section in dataclasses.fields(JobConfig):
        lines.append(f"\n  {section.name}: {section.metadata.get('help', '')}")
        if section.name == "train":
            for key, value in TRAIN_DEFAULTS.items():
                lines.append(f"    train.{key} = {value!r}")
            lines.append("    train.<any other RewardConfig field>: see transformers.TrainingArguments")
            continue
        cls = typing.get_type_hints(JobConfig)[section.name]
        defaults = dataclasses.asdict(getattr(JobConfig(), section.name))
        for key, default, doc in field_docs(cls, section.name):
            value = _lookup(defaults, key.split(".")[1:], default)
            lines.append(f"    {key} = {value!r}\n        {doc}")
    return "\n".join(lines)


def _lookup(tree: Mapping, parts: list[str], fallback):
    for part in parts:
        if not isinstance(tree, Mapping) or part not in tree:
            return fallback
        tree = tree[part]
    return tree
