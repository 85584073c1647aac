"""Preference data on Ray Data: sources, checked reading, tokenization, worker feeding.

``DataConfig`` is cheap to import (the config tree needs it); everything else loads
on first use, so importing this package does not import Ray or torch.
"""

from rayreward.data.config import ColumnsConfig, DataConfig

__all__ = [
    "DataConfig",
    "ColumnsConfig",
    "build_datasets",
    "PreparedData",
    "DataCounts",
    "DataSourceError",
    "resolve_source",
    "iter_pair_batches",
    "BatchStream",
    "plan_steps",
    "StepPlan",
]

_LAZY = {
    "build_datasets": "pipeline",
    "PreparedData": "pipeline",
    "DataCounts": "pipeline",
    "DataSourceError": "sources",
    "resolve_source": "sources",
    "iter_pair_batches": "feeding",
    "BatchStream": "feeding",
    "plan_steps": "feeding",
    "StepPlan": "feeding",
}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
