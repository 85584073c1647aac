"""rayreward: train reward models for RLHF, from a laptop to a Ray cluster.

The public names load lazily, so ``import rayreward`` stays cheap (a Ray Data
tokenizer actor imports the package without pulling in ``transformers.Trainer``).
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "RewardConfig": "rayreward.config",
    "RewardTrainer": "rayreward.trainer",
    "RewardDataCollatorWithPadding": "rayreward.collator",
    "pairwise_loss": "rayreward.loss",
    "reward_metrics": "rayreward.loss",
    "BadRowError": "rayreward.formats",
    "DataFormatError": "rayreward.formats",
    "JobConfig": "rayreward.job_config",
    "load_job_config": "rayreward.job_config",
    "fit": "rayreward.distributed",
    "save_normalization": "rayreward.normalization",
    "load_normalization": "rayreward.normalization",
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
