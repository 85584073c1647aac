"""The run spec: everything a training worker needs, decided once on the driver.

``run_spec(job, prepared)`` turns a job (``scaling.use_gpu`` already decided) and its
prepared data into a ``RunSpec``: the ``RewardConfig`` arguments, the model to load, the
LoRA adapters, the tokenizer, the DeepSpeed config, the step plan, how batches are fed
and what goes into each checkpoint. ``rayreward.run.fit`` hands it to every worker as it
is (it pickles); a worker computes only what depends on itself: its output folder, the
accumulation of an elastic run at its world size, and the DeepSpeed config of a resume
from another world size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from rayreward.core.checkpoint import CheckpointManifest
from rayreward.core.model import BaseModelSpec, LoraSpec
from rayreward.data.feeding import FeedSpec, StepPlan
from rayreward.data.tokenizer import TokenizerSpec
from rayreward.job.config import JobConfig, reward_config_kwargs, step_plan, tokenizer_spec

# Set by each worker: its own folder, and the DeepSpeed config it resumes with.
_PER_WORKER_ARGS = ("output_dir", "deepspeed")


@dataclass(frozen=True)
class CheckpointSpec:
    """What happens to each checkpoint a worker saves.

    Attributes:
        upload: ``sync`` or ``async`` (``storage.checkpoint_upload``).
        validate: hand it to Ray's checkpoint validation (``storage.checkpoint_eval: ray``).
        manifest: written into it, so that ``rayreward export`` can rebuild its model.
    """

    upload: str
    validate: bool
    manifest: CheckpointManifest


@dataclass(frozen=True)
class RunSpec:
    """One training run as its workers see it (see the module docstring).

    Attributes:
        training_args: the ``RewardConfig`` keyword arguments of every worker, less its
            ``output_dir`` and ``deepspeed`` (see ``reward_config_kwargs``).
        model: the model to load.
        lora: the LoRA adapters to train, or None to train every weight.
        tokenizer: the tokenizer Ray Data tokenized with; its ids are those in the shards.
        deepspeed: the DeepSpeed config (empty: none).
        steps: the optimizer steps of the run.
        feed: how each worker feeds its trainer.
        checkpoints: upload, validation and manifest of each checkpoint.
        label_stats: ratings with ``train.standardize_targets``: each attribute's mean and
            std over the training ratings (computed here, once); None otherwise.
    """

    training_args: dict[str, Any]
    model: BaseModelSpec
    lora: LoraSpec | None
    tokenizer: TokenizerSpec
    deepspeed: dict[str, Any]
    steps: StepPlan
    feed: FeedSpec
    checkpoints: CheckpointSpec
    label_stats: Any = None

    @property
    def zero_stage(self) -> int:
        """The ZeRO stage of the DeepSpeed config (0 without DeepSpeed)."""
        return self.deepspeed.get("zero_optimization", {}).get("stage", 0)

    def reward_config_kwargs(self, output_dir: str, world_size: int, deepspeed: dict[str, Any] | None
                             ) -> dict[str, Any]:
        """The ``RewardConfig`` arguments of one worker.

        Args:
            output_dir: the worker's own folder.
            world_size: the workers of the run now; an elastic run's accumulation keeps
                its global batch at this world size.
            deepspeed: the DeepSpeed config the worker runs with (``self.deepspeed``, or
                that config set to load a universal checkpoint).
        """
        kwargs = {**self.training_args, "output_dir": output_dir, "deepspeed": deepspeed}
        accumulation = self.feed.accumulation(world_size)
        if accumulation is not None:
            kwargs["gradient_accumulation_steps"] = accumulation
        return kwargs


def run_spec(job: JobConfig, prepared) -> RunSpec:
    """The ``RunSpec`` of a job on its prepared data.

    Args:
        job: a validated ``JobConfig`` whose ``scaling.use_gpu`` is decided
            (``rayreward.run.fit.resolve_scaling_on_cluster``).
        prepared: its data (``rayreward.data.build_datasets``): the pair count sizes the
            step plan, and the eval shard is fed when there is one.

    Raises:
        ValueError: ``scaling.use_gpu`` is still ``auto``; or the step plan cannot be
            made (fewer pairs than workers, a stream without ``train.max_steps``).
    """
    from rayreward.job.deepspeed import deepspeed_config_for

    if job.scaling.use_gpu == "auto":
        raise ValueError("scaling.use_gpu: got 'auto'; decide it first (resolve_scaling_on_cluster)")
    plan = step_plan(job, prepared.num_train_pairs)
    ds_config = deepspeed_config_for(job)
    args = reward_config_kwargs(job, "", plan.max_steps, ds_config)
    for key in _PER_WORKER_ARGS:
        args.pop(key)
    t, m = job.train, job.model
    model = BaseModelSpec(name_or_path=m.name_or_path, revision=m.revision, dtype=m.dtype,
                          attn_implementation=m.attn_implementation, trust_remote_code=bool(m.trust_remote_code))
    lora = None
    if job.lora.enabled:
        targets = job.lora.target_modules
        lora = LoraSpec(r=job.lora.r, alpha=job.lora.alpha, dropout=job.lora.dropout,
                        target_modules=targets if isinstance(targets, str) else tuple(targets))
    tokenizer = tokenizer_spec(job)
    # Elastic: the global batch stays the one planned for the most workers; fewer
    # workers each accumulate more micro-batches per step (GlobalBatchStream).
    global_batch = None
    if job.scaling.elastic:
        global_batch = job.scaling.max_workers * t["per_device_train_batch_size"] * t["gradient_accumulation_steps"]
    feed = FeedSpec(train_batch_size=t["per_device_train_batch_size"], eval_batch_size=t["per_device_eval_batch_size"],
                    shuffle=job.data.shuffle, shuffle_buffer_size=job.data.shuffle_buffer_size, seed=job.data.seed,
                    length_group_batches=t["length_group_batches"], global_batch=global_batch,
                    has_eval=prepared.eval is not None, kind=prepared.kind)
    label_stats = _label_stats(job, prepared)
    head, names = None, t["attributes"]
    if isinstance(names, str):  # one comma-separated string, as RewardConfig takes it
        names = [a.strip() for a in names.split(",") if a.strip()]
    if names:
        # An adapter or ZeRO shards carry no model config: the manifest keeps the head's.
        weights = t["attribute_weights"] or [1.0 / len(names)] * len(names)
        mean, std = label_stats or (None, None)
        head = {"attributes": list(names), "weights": [float(w) for w in weights], "mean": mean, "std": std}
    manifest = CheckpointManifest(dataclasses.replace(model, attn_implementation=None), tokenizer, lora, head)
    checkpoints = CheckpointSpec(upload=job.storage.checkpoint_upload, validate=job.storage.checkpoint_eval == "ray",
                                 manifest=manifest)
    return RunSpec(training_args=args, model=model, lora=lora, tokenizer=tokenizer, deepspeed=ds_config, steps=plan,
                   feed=feed, checkpoints=checkpoints, label_stats=label_stats)


def _label_stats(job: JobConfig, prepared):
    """Ratings with ``train.standardize_targets``: each attribute's mean and std over the training data."""
    if prepared.kind != "ratings" or not job.train["standardize_targets"]:
        return None
    import numpy as np

    from rayreward.core.group_data import label_statistics

    rows = [np.asarray(v, dtype=np.float64) for batch in prepared.train.select_columns(["labels"]).iter_batches(
        batch_format="numpy") for v in batch["labels"]]
    return label_statistics(np.stack(rows))
