"""A training checkpoint to a plain Hugging Face model folder.

The result loads with ``AutoModelForSequenceClassification.from_pretrained(out)`` and
gives the checkpoint's rewards: LoRA adapters are merged into the base weights, ZeRO-3
shards are gathered (from the 16-bit copy the checkpoint holds, or with DeepSpeed's
``zero_to_fp32`` when it holds only shards), weights are written as safetensors and the
tokenizer is saved beside them.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
from typing import Any

from rayreward.runtime import storage as _storage

# The job file a run writes into each checkpoint: how to rebuild its base model.
JOB_FILE = "rayreward_job.json"
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def export_checkpoint(checkpoint: str, out_dir: str, base_model: str | None = None) -> str:
    """Writes the consolidated model of a checkpoint, and its tokenizer, to ``out_dir``.

    Args:
        checkpoint: a checkpoint folder of a ``rayreward train`` run (local path or
            URI such as ``s3://bucket/runs/name/checkpoint-000100``), or any folder the
            Hugging Face ``Trainer`` saved.
        out_dir: where to write (local path or URI); its previous content is replaced.
        base_model: the base model of a LoRA checkpoint; read from the checkpoint's
            job file (or the adapter config) when None.

    Returns:
        ``out_dir``.

    Raises:
        FileNotFoundError: the folder holds neither weights, an adapter, nor ZeRO shards.

    Example:
        >>> export_checkpoint("runs/demo/checkpoint-000150", "exported")
        >>> AutoModelForSequenceClassification.from_pretrained("exported")
    """
    with tempfile.TemporaryDirectory(prefix="rayreward-export-") as tmp:
        local = _storage.download_dir(checkpoint, os.path.join(tmp, "checkpoint"))
        model, tokenizer = load_checkpoint(local, base_model)
        target = out_dir if not _storage.is_uri(out_dir) else os.path.join(tmp, "out")
        if not _storage.is_uri(out_dir) and os.path.isdir(out_dir):
            import shutil

            shutil.rmtree(out_dir)
        model.save_pretrained(target, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(target)
        if _storage.is_uri(out_dir):
            _storage.upload_dir(target, out_dir)
    return out_dir


def load_checkpoint(folder: str, base_model: str | None = None):
    """``(model, tokenizer)`` of a local checkpoint folder, merged and consolidated."""
    from transformers import AutoModelForSequenceClassification

    job = _read_job(folder)
    if os.path.exists(os.path.join(folder, "adapter_config.json")):
        from peft import PeftModel

        from rayreward.core.model import load_base_model

        base = load_base_model(_model_section(job, folder, base_model))
        model = PeftModel.from_pretrained(base, folder).merge_and_unload()
    elif any(os.path.exists(os.path.join(folder, f)) for f in _WEIGHT_FILES):
        model = AutoModelForSequenceClassification.from_pretrained(folder)
    elif glob.glob(os.path.join(folder, "global_step*")):
        model = _from_zero_shards(folder, job, base_model)
    else:
        raise FileNotFoundError(
            f"{folder} holds no model weights (model.safetensors), LoRA adapter (adapter_config.json) or "
            "DeepSpeed shards (global_step*/); point at a checkpoint-NNNNNN folder of a run"
        )
    model.eval()
    return model, _load_tokenizer(folder, job)


def _from_zero_shards(folder: str, job: dict | None, base_model: str | None):
    # Only shards (e.g. a user DeepSpeed config without stage3_gather_16bit_weights_on_model_save).
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from rayreward.core.model import load_base_model, peft_config_for

    state = get_fp32_state_dict_from_zero_checkpoint(folder)
    if job is not None or base_model:
        model = load_base_model(_model_section(job, folder, base_model))
        lora = peft_config_for((job or {}).get("lora", {}))
        if lora is not None:
            from rayreward.core.model import wrap_peft

            model = wrap_peft(model, lora)
        model.load_state_dict(state, strict=True)
        return model.merge_and_unload() if lora is not None else model
    model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(folder))
    model.load_state_dict(state, strict=True)
    return model


def _read_job(folder: str) -> dict | None:
    path = os.path.join(folder, JOB_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _model_section(job: dict | None, folder: str, base_model: str | None) -> dict:
    if base_model:
        return {**((job or {}).get("model") or {}), "name_or_path": base_model}
    if job is not None:
        return job["model"]
    with open(os.path.join(folder, "adapter_config.json"), encoding="utf-8") as f:
        name = json.load(f).get("base_model_name_or_path")
    if not name:
        raise ValueError(f"{folder}: the adapter does not name its base model; pass base_model (--base-model)")
    return {"name_or_path": name}


def _load_tokenizer(folder: str, job: dict | None):
    from transformers import AutoTokenizer

    if os.path.exists(os.path.join(folder, "tokenizer_config.json")):
        return AutoTokenizer.from_pretrained(folder)
    from rayreward.data.tokenizer import load_tokenizer

    if job is not None:
        return load_tokenizer(job["model"]["name_or_path"])
    adapter = os.path.join(folder, "adapter_config.json")
    if os.path.exists(adapter):
        # An adapter saved without its tokenizer reads text as its base model does.
        with open(adapter, encoding="utf-8") as f:
            config = json.load(f)
        base = config.get("base_model_name_or_path")
        if base:
            return load_tokenizer(base, **({"revision": config["revision"]} if config.get("revision") else {}))
    return None
