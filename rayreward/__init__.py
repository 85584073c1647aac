"""rayreward: train reward models for RLHF, from a laptop to a Ray cluster.

The public names load lazily, so ``import rayreward`` stays cheap (a Ray Data
tokenizer task imports the package without pulling in ``transformers.Trainer``).
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "RewardConfig": "rayreward.core.config",
    "RewardTrainer": "rayreward.core.trainer",
    "RewardDataCollatorWithPadding": "rayreward.data.collators",
    "DataCollatorForPreference": "rayreward.data.collators",
    "pairwise_loss": "rayreward.core.loss",
    "reward_metrics": "rayreward.core.metrics",
    "BadRowError": "rayreward.data.formats",
    "DataFormatError": "rayreward.data.formats",
    "JobConfig": "rayreward.job.config",
    "load_job_config": "rayreward.job.config",
    "fit": "rayreward.run.fit",
    "save_normalization": "rayreward.evaluation.normalization",
    "load_normalization": "rayreward.evaluation.normalization",
}

__all__ = list(_PUBLIC)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rayreward' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
