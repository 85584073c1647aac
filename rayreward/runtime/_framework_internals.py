"""The one place that touches private names of the frameworks rayreward builds on.

Everything else in rayreward uses public APIs only (a test checks it). Each name below
is used because no public way exists in the version named; on an upgrade, this module
is what breaks, and the rest of the package does not change.

transformers 5.24
    There is no public getter for the attention implementation a model was loaded
    with: ``PreTrainedModel.set_attn_implementation`` is the public setter, but reading
    it back goes through ``config._attn_implementation``; whether a model class takes
    its attention function from ``AttentionInterface`` is only told by the class method
    ``_can_set_attn_implementation``.

transformers 5.24 (TrainingArguments)
    The fields ``TrainingArguments`` accepts as JSON strings (so that a command line
    can pass a dict) are listed only in its private ``_VALID_DICT_FIELDS``; a subclass
    adding a dict field (``RewardConfig.model_init_kwargs``) extends that list.

Ray 2.60 (Train V2, torch backend)
    Keeping torch.distributed's rendezvous on 127.0.0.1 (see ``rayreward.run.loopback``)
    needs a ``TorchConfig`` whose backend opens the store itself before
    ``init_process_group``: Ray exposes no hook there, so its private backend class
    ``_TorchBackend`` is subclassed and its two setup helpers are reused
    (``_set_torch_distributed_env_vars``, ``_setup_torch_process_group``).

Ray 2.60 (Train V2, checkpoint record)
    Which checkpoint a re-run resumes from is what Ray's controller last recorded in the
    run folder's ``checkpoint_manager_snapshot.json``; no public API reads it without
    starting a trainer, and the interrupt hint must name that checkpoint, not a newer
    folder the controller had not yet taken.
"""

from __future__ import annotations


def loaded_attention(model) -> str:
    """The attention implementation of a ``transformers`` model (``"eager"`` when unset)."""
    return getattr(model.config, "_attn_implementation", None) or "eager"


def takes_attention_interface(model) -> bool:
    """Whether a ``transformers`` model class runs its attention through ``AttentionInterface``."""
    return bool(type(model)._can_set_attn_implementation())


def training_arguments_dict_fields() -> list[str]:
    """``TrainingArguments``' fields parsed from JSON strings (its ``_VALID_DICT_FIELDS``)."""
    from transformers import TrainingArguments

    return list(TrainingArguments._VALID_DICT_FIELDS)


def ray_torch_backend():
    """Ray Train's torch backend class (``ray.train.torch.config._TorchBackend``)."""
    from ray.train.torch.config import _TorchBackend

    return _TorchBackend


def ray_torch_process_group(backend: str, world_rank: int, world_size: int, timeout_s: int) -> None:
    """What Ray's torch backend runs on each worker: the env vars, then the process group."""
    from ray.train.torch.config import _set_torch_distributed_env_vars, _setup_torch_process_group

    _set_torch_distributed_env_vars()
    _setup_torch_process_group(backend=backend, world_rank=world_rank, world_size=world_size,
                               init_method="env://", timeout_s=timeout_s)


def ray_train_latest_checkpoint_name(run_dir: str) -> str | None:
    """The checkpoint folder Ray Train resumes a run from: the latest one its controller
    recorded in ``<run_dir>/checkpoint_manager_snapshot.json`` (a file format of Ray 2.60's
    Train V2 with no public reader), or None when there is no readable record.
    """
    import json

    from rayreward.runtime import storage

    try:
        snapshot = json.loads(storage.read_bytes(storage.join(run_dir, "checkpoint_manager_snapshot.json")))
    except (OSError, ValueError):
        return None
    latest = snapshot.get("latest_checkpoint_result") if isinstance(snapshot, dict) else None
    name = latest.get("checkpoint_dir_name") if isinstance(latest, dict) else None
    return name if isinstance(name, str) and name else None
