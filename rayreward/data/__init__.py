"""Preference data on Ray Data: sources, checked reading, tokenization, worker feeding.

- ``config``: ``DataConfig``, the ``data:`` section of a job.
- ``sources``: a data source (file, folder, glob, ``save_to_disk``, URI) to its files.
- ``reader``: reading rows from those files, checking each where it is read.
- ``formats``: the pair formats (detection, row checks) and ``PairEncoder``.
- ``tokenizer``: ``TokenizerSpec`` (one tokenizer for every path) and the built-in tokenizer.
- ``pipeline``: ``build_datasets``, Ray Data tokenization into Arrow blocks.
- ``feeding``: a worker's batches from its shard, and the step count of a run.
- ``collators``: padded pair batches (``RewardDataCollatorWithPadding``, TRL's collator).
- ``packing``: length-grouped batches, padding-free and shared-prefix packing.
- ``groups``: beyond pairs: ranked groups of K responses, chosen/rejected lists, ratings
  (formats, row checks, ``GroupEncoder``); ``group_collators``: their batches, padded or
  packed; ``group_packing``: a group packed as its prompt once, then its K responses.

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
