"""rayreward: train reward models for RLHF, from a laptop to a Ray cluster."""

from .collator import RewardDataCollatorWithPadding
from .config import RewardConfig
from .formats import BadRowError, DataFormatError
from .loss import pairwise_loss, reward_metrics
from .trainer import RewardTrainer

__all__ = [
    "RewardConfig",
    "RewardTrainer",
    "RewardDataCollatorWithPadding",
    "pairwise_loss",
    "reward_metrics",
    "BadRowError",
    "DataFormatError",
]
__version__ = "0.1.0"
