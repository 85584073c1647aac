"""Reward normalization statistics stored in an exported model's ``config.json``.

A reward model's scale is arbitrary (the Bradley-Terry loss only sees differences), so
consumers such as a PPO loop usually want rewards centred and scaled. The mean and
standard deviation of the rewards on an eval set (chosen and rejected answers pooled)
are written into the model's ``config.json`` under these keys::

    "rayreward_reward_mean": 0.41,
    "rayreward_reward_std": 1.73,
    "rayreward_reward_stats_source": "eval.jsonl, 400 pairs"

Hugging Face configs keep unknown keys as attributes, so the numbers travel with the
model: ``AutoConfig.from_pretrained(dir).rayreward_reward_mean`` reads them and a later
``save_pretrained`` keeps them. ``rayreward score --normalize`` reports
``(reward - mean) / std``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MEAN_KEY = "rayreward_reward_mean"
STD_KEY = "rayreward_reward_std"
SOURCE_KEY = "rayreward_reward_stats_source"


@dataclass(frozen=True)
class RewardNormalization:
    """Mean and standard deviation of a model's rewards on an eval set."""

    mean: float
    std: float
    source: str | None = None

    def __post_init__(self):
        if not isinstance(self.mean, (int, float)) or not math.isfinite(self.mean):
            raise ValueError(f"reward mean: got {self.mean!r}; expected a finite number")
        if not isinstance(self.std, (int, float)) or not math.isfinite(self.std) or self.std <= 0:
            raise ValueError(
                f"reward std: got {self.std!r}; expected a finite number > 0 "
                "(a model that gives every answer the same reward cannot be normalized)"
            )

    def apply(self, rewards):
        """``(rewards - mean) / std``, for a float, a numpy array or a tensor."""
        return (rewards - self.mean) / self.std

    @classmethod
    def from_rewards(cls, rewards, source: str | None = None) -> "RewardNormalization":
        """Statistics of a set of rewards (population std)."""
        import numpy as np

        values = np.asarray(rewards, dtype=np.float64).ravel()
        if values.size == 0:
            raise ValueError("no rewards to compute normalization statistics from")
        return cls(float(values.mean()), float(values.std()), source)


def save_normalization(model_dir: str | os.PathLike, mean: float, std: float, source: str | None = None) -> Path:
    """Writes reward mean and std into ``<model_dir>/config.json``.

    Other keys of the config are kept; the file is replaced atomically, so a reader
    never sees half a config. The distributed trainer calls this on its export at the
    end of training; ``rayreward evaluate --save-normalization`` calls it too.

    Args:
        model_dir: a model directory written by ``save_pretrained``.
        mean: mean reward on the eval set (chosen and rejected answers pooled).
        std: standard deviation of those rewards; must be > 0.
        source: what the numbers were computed on, e.g. ``"eval.jsonl, 400 pairs"``.

    Returns:
        The path of the config file written.

    Raises:
        FileNotFoundError: ``model_dir`` has no ``config.json``.
        ValueError: mean or std is not finite, or std <= 0.

    Example:
        >>> save_normalization("runs/rm/model", mean=0.41, std=1.73, source="eval.jsonl, 400 pairs")
    """
    from transformers import AutoConfig

    stats = RewardNormalization(float(mean), float(std), source)
    path = _config_path(model_dir)
    config = AutoConfig.from_pretrained(path.parent)
    setattr(config, MEAN_KEY, stats.mean)
    setattr(config, STD_KEY, stats.std)
    setattr(config, SOURCE_KEY, source)
    # What save_pretrained writes, but atomically: a reader never sees half a config.
    text = config.to_json_string(use_diff=True)
    fd, tmp = tempfile.mkstemp(prefix=".config.", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_normalization(model: str | os.PathLike | Any) -> RewardNormalization | None:
    """The stored statistics, or None when the model has none.

    Args:
        model: a model directory, a ``transformers`` config, or a model (its
            ``.config`` is read).

    Raises:
        ValueError: the stored values are not usable (e.g. std 0).
    """
    if isinstance(model, (str, os.PathLike)):
        config: Any = json.loads(_config_path(model).read_text(encoding="utf-8"))
        get = config.get
    else:
        config = getattr(model, "config", model)
        get = lambda key: getattr(config, key, None)  # noqa: E731
    mean, std = get(MEAN_KEY), get(STD_KEY)
    if mean is None and std is None:
        return None
    return RewardNormalization(mean, std, get(SOURCE_KEY))


def _config_path(model_dir: str | os.PathLike) -> Path:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{model_dir}: no config.json; expected a model directory written by save_pretrained "
            "(a training run exports one to <storage>/<name>/model/)"
        )
    return path
