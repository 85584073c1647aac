"""The DeepSpeed config of a job: generated from the ``deepspeed`` section, or the user's file.

The generated config uses ``"auto"`` wherever the Hugging Face integration fills the value
from ``RewardConfig`` (batch sizes, accumulation, clipping, precision, bucket sizes), so
the two never disagree. It has no ``"optimizer"`` block unless optimizer offload needs
one: without it the Trainer's AdamW is used and DeepSpeed need not compile ``fused_adam``
(a ~35 s C++ build on first use); with offload DeepSpeed requires its own CPU Adam.
"""

from __future__ import annotations

import json
from typing import Any


def build_deepspeed_config(stage: int, offload_optimizer: bool = False, offload_param: bool = False,
                           config_path: str | None = None, use_gpu: bool = False) -> dict[str, Any]:
    """Returns the DeepSpeed config dict passed as ``RewardConfig(deepspeed=...)``.

    Args:
        stage: ZeRO stage 0-3.
        offload_optimizer: keep optimizer state (and its step) on the CPU.
        offload_param: keep ZeRO-3 parameters on the CPU.
        config_path: a user's DeepSpeed JSON; when given it is returned as it is.
        use_gpu: pin offloaded memory (only meaningful with GPUs).

    Example:
        >>> build_deepspeed_config(2)["zero_optimization"]["stage"]
        2
    """
    if config_path:
        with open(config_path, encoding="utf-8") as f:
            return json.load(f)
    zero: dict[str, Any] = {"stage": stage}
    if stage >= 1:
        zero.update(contiguous_gradients=True, overlap_comm=use_gpu, reduce_bucket_size="auto")
    if stage == 3:
        zero.update(
            stage3_prefetch_bucket_size="auto",
            stage3_param_persistence_threshold="auto",
            # Checkpoints then hold the whole model, not only per-rank shards, so they
            # export without DeepSpeed's zero_to_fp32.
            stage3_gather_16bit_weights_on_model_save=True,
        )
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": use_gpu}
    if offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": use_gpu}
    config: dict[str, Any] = {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
        "steps_per_print": 1_000_000_000,
        "wall_clock_breakdown": False,
    }
    if offload_optimizer:
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        }
    return config


def deepspeed_config_for(job) -> dict[str, Any]:
    """``build_deepspeed_config`` for a ``JobConfig``."""
    ds = job.deepspeed
    return build_deepspeed_config(ds.stage, ds.offload_optimizer, ds.offload_param, ds.config, job.scaling.use_gpu)
