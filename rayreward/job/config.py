"""The job config: one typed tree, mirrored by YAML, with dotted overrides.

Sections: ``model``, ``data`` (``rayreward.data.DataConfig``), ``lora``, ``train`` (any
``RewardConfig`` field, ``rayreward.job.train_section``), ``deepspeed``, ``scaling``, ``storage``, ``failure``, ``tune`` (a
sweep, ``rayreward.tune.sweep``). Every default lives in the dataclasses below and, for
``train``, in ``RewardConfig``. The demo's settings (``train_section.TRAIN_DEFAULTS``, the
bundled sample pairs, the run name ``demo``) apply only to the built-in models
(``builtin:tiny-llama`` and the like): any other model starts from ``RewardConfig``'s own
defaults and needs ``data.train``. ``load_job_config`` reads YAML, applies overrides and validates,
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
    elastic_problems,
)
from rayreward.job.train_section import MANAGED_TRAIN_FIELDS, TRAIN_DEFAULTS, TrainSection, train_help
from rayreward.job.tune_section import TuneSection
from rayreward.data.config import DataConfig
from rayreward.data.tokenizer import SAMPLE_DATA_DIR, TokenizerSpec, is_builtin

__all__ = [
    "JobConfig", "ConfigError", "load_job_config", "job_from_dict", "apply_overrides", "validate",
    "reward_config_kwargs", "step_plan", "run_name", "storage_uri", "to_dict", "help_text", "tokenizer_spec",
    "is_demo", "DEMO_RUN_NAME", "value_sources",
]

DEMO_RUN_NAME = "demo"
DEFAULT_MODEL = "builtin:tiny-llama"


def demo_data() -> dict[str, str]:
    """The bundled sample pairs: the data of a built-in model's job that names none."""
    return {"train": str(SAMPLE_DATA_DIR / "train.jsonl"), "eval": str(SAMPLE_DATA_DIR / "eval.jsonl")}


@dataclass
class JobConfig:
    """A whole training job. Build it with ``load_job_config`` or ``job_from_dict``."""

    model: ModelSection = field(default_factory=ModelSection, metadata={"help": "The model."})
    data: DataConfig = field(default_factory=DataConfig, metadata={
        "help": "The preference pairs (data.train is required except for the built-in demo models)."})
    lora: LoraSection = field(default_factory=LoraSection, metadata={"help": "LoRA adapters."})
    train: TrainSection = field(
        default_factory=TrainSection,
        metadata={"help": "Any RewardConfig (transformers.TrainingArguments) field; RewardConfig's defaults, with "
                          "the demo's values for the built-in models."},
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
    demo = _builtin_model(job)
    # A built-in model's job that names no training pairs gets the demo's sample pairs
    # (eval too); any other job names its own.
    base = demo_data() if demo and isinstance(user_data, Mapping) and "train" not in user_data else {}
    job.data = build(DataConfig, {**base, **user_data} if isinstance(user_data, Mapping) else user_data, "data", problems)
    if not demo and isinstance(job.data.train, str) and not job.data.train.strip():
        problems.append(f"data.train: required with model.name_or_path={job.model.name_or_path!r}; expected a file, "
                        "folder, glob or URI of your preference pairs (the bundled sample pairs are for the built-in "
                        "demo models only)")
    if not (job.data.eval or job.data.eval_split) and "eval_strategy" not in train:
        # One file and nothing else trains: without eval data the demo's periodic
        # evaluation does not apply (the start summary says accuracy is not measured).
        train = {**train, "eval_strategy": "no"}
    if getattr(job.storage, "checkpoint_eval", None) == "ray" and "eval_strategy" not in train:
        # Checkpoints are evaluated beside training: the workers do not evaluate too.
        train = {**train, "eval_strategy": "no"}
    job.train = TrainSection(train, demo_defaults=demo)
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
    if not _builtin_model(job):
        # job_from_dict says why data.train is required here; the data section's own
        # "got ''" line would repeat it.
        problems = [p for p in problems if not p.startswith("data.train: got ''")]
    if not any(p.startswith("train.") for p in problems):
        problems += _cross_problems(job)
    if not problems:
        problems += _reward_config_problems(job)
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
    eval_strategy, save_strategy = str(t["eval_strategy"]), str(t["save_strategy"])
    if t["bf16"] and t["fp16"]:
        problems.append("train.fp16: got true with train.bf16=true; expected at most one of them")
    if t["fp16"] and job.scaling.use_gpu is False:
        problems.append("train.fp16: got true with scaling.use_gpu=false; expected bf16 or fp32 on CPU workers")
    if save_strategy != "steps":
        problems.append(f"train.save_strategy: got {save_strategy!r}; expected 'steps' (the Ray Data stream is one "
                        "Trainer epoch, so checkpoints are counted in steps)")
    if eval_strategy not in ("steps", "no"):
        problems.append(f"train.eval_strategy: got {eval_strategy!r}; expected 'steps' or 'no'")
    if eval_strategy != "no" and not has_eval:
        problems.append(f"train.eval_strategy: got {eval_strategy!r} but there is no eval data; expected data.eval "
                        "or data.eval_split to be set, or train.eval_strategy=no")
    off_path = job.storage.checkpoint_eval == "ray"
    if off_path and not has_eval:
        problems.append("storage.checkpoint_eval: got 'ray' but there is no eval data; expected data.eval or "
                        "data.eval_split to be set, or storage.checkpoint_eval=trainer")
    attribute = job.storage.checkpoint_score_attribute
    if isinstance(attribute, str) and attribute and not off_path:
        if attribute.startswith("eval_") and (eval_strategy != "steps" or not has_eval):
            problems.append(f"storage.checkpoint_score_attribute: got {attribute!r} without evaluation; expected "
                            "train.eval_strategy=steps and eval data, or storage.checkpoint_eval=ray")
        elif attribute.startswith("eval_"):
            problems += save_eval_problems(job, f"so each checkpoint's {attribute} is current")
    problems += elastic_problems(job)
    if not job.data.materialize and t["max_steps"] <= 0:
        problems.append("train.max_steps: got no step count with data.materialize=false; expected a positive "
                        "integer (streamed data has no known length)")
    return problems


def save_eval_problems(job: JobConfig, why: str) -> list[str]:
    """The rule shared by ranked checkpoints and sweeps: a checkpoint lands on an eval step."""
    save_steps, eval_steps = job.train["save_steps"], job.train["eval_steps"] or job.train["logging_steps"]
    if save_steps % eval_steps:
        return [f"train.save_steps: got {save_steps} with train.eval_steps={eval_steps}; expected a multiple of "
                f"eval_steps {why}"]
    return []


# -- values derived from a config (computed here, never stored back) ---------------


def step_plan(job: JobConfig, num_train_pairs: int | None):
    """The optimizer steps of a run (``rayreward.data.StepPlan``), from the pair count,
    workers, batch size, accumulation and epochs; ``train.max_steps > 0`` wins."""
    from rayreward.data import plan_steps

    t = job.train
    return plan_steps(
        num_train_pairs,
        num_workers=job.scaling.max_workers,
        per_worker_batch_size=t["per_device_train_batch_size"],
        gradient_accumulation_steps=t["gradient_accumulation_steps"],
        num_epochs=float(t["num_train_epochs"]),
        max_steps=t["max_steps"],
        drop_last=bool(t["dataloader_drop_last"]),
        global_batches=job.scaling.elastic,
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
        # use_gpu "auto" is decided on the driver before the workers start (resolve_scaling).
        "use_cpu": job.scaling.use_gpu is not True,
        "save_total_limit": None,
        # Progress lines come from rayreward's own rank-0 callback (rate and ETA).
        "disable_tqdm": True,
    }


def run_name(job: JobConfig) -> str:
    """``storage.name``; else ``demo`` for the demo, a new ``reward-<date>-<time>`` for any other job."""
    if job.storage.name:
        return job.storage.name
    return DEMO_RUN_NAME if is_demo(job) else time.strftime("reward-%Y%m%d-%H%M%S")


def is_demo(job: JobConfig) -> bool:
    """A built-in model on the bundled sample pairs."""
    return _builtin_model(job) and job.data.train == demo_data()["train"]


def _builtin_model(job: JobConfig) -> bool:
    name = getattr(job.model, "name_or_path", DEFAULT_MODEL)
    return isinstance(name, str) and is_builtin(name)


def resolve_scaling(job: JobConfig, cluster_gpus: float) -> tuple[JobConfig, str | None]:
    """The job with ``scaling.use_gpu: auto`` decided by the cluster's GPUs, and a line
    saying what was chosen (None when the job named it).

    Raises:
        ConfigError: fp16 on CPU workers, found once the choice is made.
    """
    if job.scaling.use_gpu != "auto":
        return job, None
    scaling = job.scaling.resolved(cluster_gpus)
    job = dataclasses.replace(job, scaling=scaling)
    if job.train["fp16"] and not scaling.use_gpu:
        raise ConfigError(["train.fp16: got true, and scaling.use_gpu=auto found no GPU in the cluster; expected "
                           "bf16 or fp32 on CPU workers, or a cluster with GPUs"])
    where = (f"GPUs: the cluster has {cluster_gpus:g}" if scaling.use_gpu
             else "CPUs: the cluster has no GPU")
    return job, f"scaling.use_gpu=auto: the workers train on {where} (set scaling.use_gpu to choose)"


# Train keys that change the token ids (a sweep over them tokenizes per trial).
TOKENIZER_TRAIN_KEYS = ("train.eos_token", "train.pad_token")


def tokenizer_spec(job: JobConfig) -> TokenizerSpec:
    """The one tokenizer of a job, loaded alike by Ray Data, the workers and the checks."""
    return TokenizerSpec(
        name_or_path=job.model.name_or_path,
        revision=job.model.revision,
        trust_remote_code=bool(job.model.trust_remote_code),
        chat_template=job.data.chat_template,
        eos_token=job.train["eos_token"],
        pad_token=job.train["pad_token"],
    )


def storage_uri(job: JobConfig) -> str:
    """``storage.path`` as Ray needs it: a URI, or an absolute local path."""
    path = job.storage.path
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def to_dict(job: JobConfig) -> dict[str, Any]:
    """The job in YAML's shape (``train`` holds the keys that are set)."""
    return {f.name: getattr(job, f.name).to_dict() if f.name == "train" else dataclasses.asdict(getattr(job, f.name))
            for f in dataclasses.fields(job)}


def help_text() -> str:
    """Every config key with its default and documentation, for ``--help``."""
    lines = ["config keys (YAML sections, or dotted overrides such as train.learning_rate=2e-5):"]
    for section in dataclasses.fields(JobConfig):
        lines.append(f"\n  {section.name}: {section.metadata.get('help', '')}")
        if section.name == "train":
            rows = train_help()
            for key, value, doc in rows[:len(TRAIN_DEFAULTS)]:
                demo = TRAIN_DEFAULTS[key.removeprefix("train.")]
                lines.append(f"    {key} = {value!r} (demo: {demo!r})\n        {_first_sentence(doc)}")
            lines.append("    and every other RewardConfig (TrainingArguments) field, with its own default:\n      "
                         + ", ".join(key.removeprefix("train.") for key, _, _ in rows[len(TRAIN_DEFAULTS):]))
            continue
        cls = typing.get_type_hints(JobConfig)[section.name]
        defaults = dataclasses.asdict(getattr(JobConfig(), section.name))
        for key, default, doc in field_docs(cls, section.name):
            value = _lookup(defaults, key.split(".")[1:], default)
            lines.append(f"    {key} = {value!r}\n        {doc}")
    return "\n".join(lines)


# Train keys `rayreward check` always shows, set or not: what decides a run's outcome.
SHOWN_TRAIN_KEYS = ("num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
                    "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "bf16", "fp16",
                    "logging_steps", "eval_strategy", "eval_steps", "save_steps", "seed")


def value_sources(job: JobConfig, file_values: Mapping[str, Any], overrides: Iterable[str] | Mapping[str, Any]
                  ) -> dict[str, tuple[Any, str]]:
    """``{dotted key: (value, where it came from)}`` for every key of the job ``check`` shows.

    Where a value comes from is one of ``override`` (the command line, or a sweep's
    sample), ``file`` (the YAML file), ``demo`` (the demo's settings, built-in models
    only), ``derived`` (set by a rule, e.g. no evaluation without eval data) or ``default``.
    """
    given = {key for key, _ in _dotted(apply_overrides({}, overrides))}
    in_file = {key for key, _ in _dotted(file_values)}
    demo_keys: set[str] = set()
    if _builtin_model(job):
        demo_keys |= {f"train.{k}" for k in TRAIN_DEFAULTS}
        if is_demo(job):
            demo_keys |= {"data.train", "data.eval"} | ({"storage.name"} if not job.storage.name else set())
    resolved = to_dict(job)
    train = resolved.pop("train")
    resolved.pop("tune", None)
    values = dict(_dotted(resolved))
    values.update({f"train.{k}": v for k, v in train.items()})
    values.update({f"train.{k}": job.train[k] for k in SHOWN_TRAIN_KEYS if f"train.{k}" not in values})
    if "storage.name" in demo_keys:
        values["storage.name"] = DEMO_RUN_NAME
    out = {}
    for key, value in values.items():
        if key in given:
            origin = "override"
        elif key in in_file:
            origin = "file"
        elif key in demo_keys:
            origin = "demo"
        elif key.startswith("train.") and key.removeprefix("train.") in train:
            origin = "derived"
        else:
            origin = "default"
        out[key] = (value, origin)
    return out


def _dotted(tree: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and path not in ("scaling.resources", "tune.search_space"):
            yield from _dotted(value, path + ".")
        else:
            yield path, value


def _first_sentence(text: str) -> str:
    return text.split(". ")[0].strip().rstrip(".") + "." if text else ""


def _lookup(tree: Mapping, parts: list[str], fallback):
    for part in parts:
        if not isinstance(tree, Mapping) or part not in tree:
            return fallback
        tree = tree[part]
    return tree
