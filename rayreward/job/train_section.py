"""The ``train:`` section: ``RewardConfig``'s own fields, typed and range-checked.

Each key's type, default and help come from ``rayreward.core.config.RewardConfig`` (the
``transformers.TrainingArguments`` dataclass plus reward fields), so nothing here
restates them. The only other defaults are the demo's, ``TRAIN_DEFAULTS``; a key set in
neither place reads as ``RewardConfig``'s default. Reading any field, set or not, gives
its effective value (``section["max_steps"]`` is -1 unless set), which is what derived
values (``job.config.step_plan``) and cross-section rules read.

``RewardConfig`` (and with it transformers) is imported on first use, not at import.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, Iterator, Mapping

from rayreward.data.config import is_int, is_number
from rayreward.config.tree import _describe, _matches, unknown_key

# The demo's training settings, for the built-in models only (a tiny random model wants a
# learning rate that would wreck a pretrained one); a `train:` section overlays them key by
# key. Chosen so that `rayreward` with no arguments reaches > 0.8 eval accuracy on the
# bundled data in a few minutes on 2 CPU cores. Any other model, and every other key,
# starts from RewardConfig's own defaults.
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
    "chat_template_path": "set data.chat_template (a Jinja template, a file holding one, or a tokenizer id or "
                          "folder whose template is cloned): the data pipeline tokenizes with it",
    "local_rank": "Ray Train sets the ranks",
}

# Ranges of the numeric fields a user commonly sets; TrainingArguments checks the rest
# (enum values, combinations) when the section is tried as a RewardConfig.
_POSITIVE_INTS = (
    "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
    "length_group_batches", "eval_accumulation_steps",
)
_NON_NEGATIVE = ("learning_rate", "weight_decay", "max_grad_norm", "warmup_steps", "warmup_ratio",
                 "center_rewards_coefficient", "dataloader_num_workers", "label_smoothing_factor")
_STEP_INTERVALS = ("save_steps", "eval_steps", "logging_steps")


@functools.lru_cache(maxsize=1)
def reward_config_fields() -> dict[str, tuple[dataclasses.Field, Any]]:
    """``{name: (dataclass field, type hint)}`` of every ``RewardConfig`` init field."""
    from rayreward.core.config import RewardConfig

    hints = typing.get_type_hints(RewardConfig)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(RewardConfig) if f.init}


def field_default(name: str) -> Any:
    """``RewardConfig``'s own default of ``name``."""
    f, _ = reward_config_fields()[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


class TrainSection(Mapping[str, Any]):
    """The ``train:`` section: the values given (over the demo's, for a built-in model's job).

    A read-only mapping. Iterating gives the keys that are set (the demo's and the
    user's), so ``RewardConfig(**section)`` passes only those; indexing a known key that
    is not set gives ``RewardConfig``'s default, and attribute access does the same
    (``section.max_steps``). Unknown keys raise ``KeyError``.

    Example:
        >>> train = TrainSection({"learning_rate": 1e-5}, demo_defaults=True)
        >>> train["learning_rate"], train["per_device_train_batch_size"], train["max_steps"]
        (1e-05, 16, -1)
    """

    def __init__(self, values: Mapping[str, Any] | None = None, *, demo_defaults: bool = False):
        self._values = {**(TRAIN_DEFAULTS if demo_defaults else {}), **dict(values or {})}

    def __getitem__(self, key: str) -> Any:
        if key in self._values:
            return self._values[key]
        if key in reward_config_fields():
            return field_default(key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"train has no field {name!r}") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self.items()) == dict(other.items())

    def __repr__(self) -> str:
        return f"TrainSection({self._values!r})"

    def __getstate__(self):
        return self._values

    def __setstate__(self, state):
        self._values = state

    def to_dict(self) -> dict[str, Any]:
        """The keys that are set, as a plain dict (YAML's shape)."""
        return dict(self._values)

    def validate(self) -> list[str]:
        """Every key's problem: managed or unknown keys, wrong types, values out of range."""
        known = reward_config_fields()
        problems = []
        for key, value in self._values.items():
            if key in MANAGED_TRAIN_FIELDS:
                problems.append(f"train.{key}: set by the job; {MANAGED_TRAIN_FIELDS[key]}")
            elif key not in known:
                problems.append(unknown_key(f"train.{key}", key, known))
            elif not _loosely_matches(value, known[key][1]):
                problems.append(f"train.{key}: got {value!r}; expected {_describe(known[key][1])}")
            else:
                problem = _range_problem(key, value)
                if problem:
                    problems.append(f"train.{key}: got {value!r}; expected {problem}")
        return problems


def allowed_values(key: str) -> tuple[str, ...] | None:
    """The values a reward field takes (``loss_type``, ``attention_backend``), or None."""
    from rayreward.core.config import ATTENTION_BACKENDS, LOSS_TYPES

    return {"loss_type": LOSS_TYPES, "attention_backend": ATTENTION_BACKENDS}.get(key)


def _range_problem(key: str, value: Any) -> str | None:
    allowed = allowed_values(key)
    if allowed is not None and value not in allowed:
        return f"one of {', '.join(allowed)}"
    if key in ("max_steps",) and is_int(value) and value != -1 and value < 1:
        return "a positive integer, or -1 to count steps from num_train_epochs"
    if key in _POSITIVE_INTS and is_int(value) and value < 1:
        return "a positive integer"
    if key in _STEP_INTERVALS and is_number(value) and value <= 0:
        return "a positive number of steps (or a fraction of the run in (0, 1))"
    if key == "num_train_epochs" and is_number(value) and value <= 0:
        return "a positive number of epochs"
    if key in _NON_NEGATIVE and is_number(value) and value < 0:
        return "a number >= 0"
    return None


def _loosely_matches(value, hint) -> bool:
    args = typing.get_args(hint) or (hint,)
    # Enum-typed fields also take their string values; TrainingArguments checks those.
    if any(isinstance(a, type) and issubclass(a, str) and a is not str for a in args):
        return isinstance(value, str) or value is None and type(None) in args
    if any(a in (dict, str) or typing.get_origin(a) in (dict, list) for a in args) and isinstance(value, (dict, str)):
        return True
    return _matches(value, hint)


def train_help() -> list[tuple[str, Any, str]]:
    """``(key, RewardConfig's default, help)`` of every ``train`` key a user may set, the demo's keys first."""
    rows = [(f"train.{k}", field_default(k), reward_config_fields()[k][0].metadata.get("help", "")) for k in TRAIN_DEFAULTS]
    for name, (f, _) in reward_config_fields().items():
        if name not in TRAIN_DEFAULTS and name not in MANAGED_TRAIN_FIELDS:
            rows.append((f"train.{name}", field_default(name), f.metadata.get("help", "")))
    return rows
