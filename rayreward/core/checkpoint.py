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
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from rayreward.runtime import storage as _storage

if TYPE_CHECKING:
    from rayreward.core.model import BaseModelSpec, LoraSpec
    from rayreward.data.tokenizer import TokenizerSpec

# The manifest a run writes into each checkpoint: how to rebuild its base model and tokenizer.
MANIFEST_FILE = "rayreward_manifest.json"
MANIFEST_FORMAT = 1
# rayreward 0.1.0 before the manifest wrote its whole job config into each checkpoint
# under this name instead; such checkpoints are still read (``_legacy_manifest``).
LEGACY_JOB_FILE = "rayreward_job.json"
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class CheckpointManifest:
    """What a checkpoint holds beside its weights so that it can be exported alone.

    Attributes:
        base_model: the model training started from: the base of a LoRA adapter, the
            architecture of ZeRO shards. Its attention kernel is not recorded (export
            loads with the default one; the weights are the same).
        tokenizer: the tokenizer the training data was tokenized with, for a checkpoint
            saved without its tokenizer files.
        adapters: the LoRA adapters' settings, or None when every weight was trained.
        head: a multi-attribute head's ``{"attributes", "weights", "mean", "std"}`` (what
            ``rayreward.core.attributes.record_attributes`` writes into the model config),
            or None for one scalar reward. A LoRA adapter or ZeRO shards carry no model
            config: the export rebuilds the head's size and its config from this.

    Example:
        >>> write_manifest(folder, CheckpointManifest(BaseModelSpec("builtin:tiny-llama"),
        ...                                           TokenizerSpec("builtin:tiny-llama")))
        >>> read_manifest(folder).base_model.name_or_path
        'builtin:tiny-llama'
    """

    base_model: BaseModelSpec
    tokenizer: TokenizerSpec
    adapters: LoraSpec | None = None
    head: dict[str, Any] | None = None

    @property
    def num_labels(self) -> int:
        """Outputs of the reward head: one per attribute, or one."""
        return len(self.head["attributes"]) if self.head else 1

    def record_head(self, model) -> None:
        """Writes the head's attributes (names, weights, standardisation) into ``model.config``."""
        if self.head:
            from rayreward.core.attributes import record_attributes

            h = self.head
            record_attributes(model, h["attributes"], h["weights"], h.get("mean"), h.get("std"))

    def to_dict(self) -> dict[str, Any]:
        """The manifest as ``rayreward_manifest.json`` holds it."""
        b = self.base_model
        return {
            "format": MANIFEST_FORMAT,
            "base_model": {"name_or_path": b.name_or_path, "revision": b.revision, "dtype": b.dtype,
                           "trust_remote_code": b.trust_remote_code},
            "adapters": None if self.adapters is None else {
                **asdict(self.adapters), "target_modules": _targets_to_json(self.adapters.target_modules)},
            "tokenizer": asdict(self.tokenizer),
            **({"head": self.head} if self.head else {}),
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = MANIFEST_FILE) -> "CheckpointManifest":
        """The manifest of ``to_dict``'s shape.

        Raises:
            ValueError: a newer format, or a field missing or of the wrong kind;
                the message names ``source``.
        """
        from rayreward.core.model import BaseModelSpec, LoraSpec
        from rayreward.data.tokenizer import TokenizerSpec

        if not isinstance(data, dict):
            raise ValueError(f"{source}: got {type(data).__name__}; expected a JSON object")
        version = data.get("format")
        if not isinstance(version, int) or version > MANIFEST_FORMAT:
            raise ValueError(f"{source}: format got {version!r}; expected {MANIFEST_FORMAT} or lower (a newer "
                             "rayreward wrote it: export it with that version)")
        try:
            adapters = data["adapters"]
            if adapters is not None:
                adapters = LoraSpec(**{**adapters, "target_modules": _targets(adapters["target_modules"])})
            head = data.get("head")
            if head is not None and not (isinstance(head, dict) and isinstance(head.get("attributes"), list)
                                         and isinstance(head.get("weights"), list)):
                raise TypeError(f"head: got {head!r}; expected attributes and weights")
            return cls(BaseModelSpec(**data["base_model"]), TokenizerSpec(**data["tokenizer"]), adapters, head)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{source}: {exc!r}; expected the base_model, tokenizer and adapters fields a run writes "
                             f"(format {MANIFEST_FORMAT})") from exc


def write_manifest(folder: str, manifest: CheckpointManifest) -> str:
    """Writes ``manifest`` into the checkpoint ``folder``; returns the file's path."""
    path = os.path.join(folder, MANIFEST_FILE)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest.to_dict(), f, indent=1)
    return path


def read_manifest(folder: str) -> CheckpointManifest | None:
    """The manifest of a local checkpoint folder (or an older run's job file), or None.

    Raises:
        ValueError: the file is there but does not hold a manifest (see ``from_dict``).
    """
    for name in (MANIFEST_FILE, LEGACY_JOB_FILE):
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except ValueError as exc:
                raise ValueError(f"{path}: not JSON ({exc}); expected the manifest a run writes") from exc
        return CheckpointManifest.from_dict(data, path) if name == MANIFEST_FILE else _legacy_manifest(data, path)
    return None


def has_manifest(folder: str) -> bool:
    """Whether a local folder holds a run's manifest (new or older layout)."""
    return any(os.path.isfile(os.path.join(folder, name)) for name in (MANIFEST_FILE, LEGACY_JOB_FILE))


def _legacy_manifest(job: Any, source: str) -> CheckpointManifest:
    # The job config as rayreward 0.1.0 wrote it before the manifest (`rayreward_job.json`:
    # its sections as YAML shows them, `train` holding only the keys that were set).
    # This is the one place in core that knows that layout; nothing writes it any more.
    from rayreward.core.model import BaseModelSpec, LoraSpec
    from rayreward.data.tokenizer import TokenizerSpec

    try:
        model, lora = job["model"], job.get("lora") or {}
        data, train = job.get("data") or {}, job.get("train") or {}
        base = BaseModelSpec(name_or_path=model["name_or_path"], revision=model.get("revision"),
                             dtype=model.get("dtype", "auto"), trust_remote_code=bool(model.get("trust_remote_code")))
        adapters = None
        if lora.get("enabled"):
            adapters = LoraSpec(r=lora["r"], alpha=lora["alpha"], dropout=lora["dropout"],
                                target_modules=_targets(lora["target_modules"]))
        tokenizer = TokenizerSpec(name_or_path=base.name_or_path, revision=base.revision,
                                  trust_remote_code=base.trust_remote_code, chat_template=data.get("chat_template"),
                                  eos_token=train.get("eos_token"), pad_token=train.get("pad_token"))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{source}: {exc!r}; expected the job config an older rayreward run wrote") from exc
    return CheckpointManifest(base, tokenizer, adapters)


def _targets(value: Any) -> str | tuple[str, ...]:
    return value if isinstance(value, str) else tuple(value)


def _targets_to_json(value: str | tuple[str, ...]) -> str | list[str]:
    return value if isinstance(value, str) else list(value)


def export_checkpoint(checkpoint: str, out_dir: str, base_model: str | None = None) -> str:
    """Writes the consolidated model of a checkpoint, and its tokenizer, to ``out_dir``.

    Args:
        checkpoint: a checkpoint folder of a ``rayreward train`` run (local path or
            URI such as ``s3://bucket/runs/name/checkpoint-000100``), or any folder the
            Hugging Face ``Trainer`` saved.
        out_dir: where to write (local path or URI); its previous content is replaced.
        base_model: the base model of a LoRA checkpoint; read from the checkpoint's
            manifest (``read_manifest``; else the adapter config) when None.

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

    manifest = read_manifest(folder)
    if os.path.exists(os.path.join(folder, "adapter_config.json")):
        from peft import PeftModel

        from rayreward.core.model import load_base_model

        base = load_base_model(_base_model(manifest, folder, base_model),
                               manifest.num_labels if manifest is not None else 1)
        model = PeftModel.from_pretrained(base, folder).merge_and_unload()
        if manifest is not None:
            manifest.record_head(model)
    elif any(os.path.exists(os.path.join(folder, f)) for f in _WEIGHT_FILES):
        model = AutoModelForSequenceClassification.from_pretrained(folder)
    elif glob.glob(os.path.join(folder, "global_step*")):
        model = _from_zero_shards(folder, manifest, base_model)
    else:
        raise FileNotFoundError(
            f"{folder} holds no model weights (model.safetensors), LoRA adapter (adapter_config.json) or "
            "DeepSpeed shards (global_step*/); point at a checkpoint-NNNNNN folder of a run"
        )
    model.eval()
    return model, _load_tokenizer(folder, manifest)


def _from_zero_shards(folder: str, manifest: CheckpointManifest | None, base_model: str | None):
    # Only shards (e.g. a user DeepSpeed config without stage3_gather_16bit_weights_on_model_save).
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from rayreward.core.model import load_base_model, peft_config_for

    state = get_fp32_state_dict_from_zero_checkpoint(folder)
    if manifest is not None or base_model:
        model = load_base_model(_base_model(manifest, folder, base_model),
                                manifest.num_labels if manifest is not None else 1)
        lora = peft_config_for(manifest.adapters if manifest is not None else None)
        if lora is not None:
            from rayreward.core.model import wrap_peft

            model = wrap_peft(model, lora)
        model.load_state_dict(state, strict=True)
        model = model.merge_and_unload() if lora is not None else model
        if manifest is not None:
            manifest.record_head(model)
        return model
    model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(folder))
    model.load_state_dict(state, strict=True)
    return model


def _base_model(manifest: CheckpointManifest | None, folder: str, base_model: str | None) -> "BaseModelSpec":
    import dataclasses

    from rayreward.core.model import BaseModelSpec

    if base_model:
        return (dataclasses.replace(manifest.base_model, name_or_path=base_model) if manifest is not None
                else BaseModelSpec(base_model))
    if manifest is not None:
        return manifest.base_model
    with open(os.path.join(folder, "adapter_config.json"), encoding="utf-8") as f:
        name = json.load(f).get("base_model_name_or_path")
    if not name:
        raise ValueError(f"{folder}: the adapter does not name its base model; pass base_model (--base-model)")
    return BaseModelSpec(name)


def _load_tokenizer(folder: str, manifest: CheckpointManifest | None):
    from transformers import AutoTokenizer

    if os.path.exists(os.path.join(folder, "tokenizer_config.json")):
        return AutoTokenizer.from_pretrained(folder)
    if manifest is not None:
        # The tokenizer the run's data was tokenized with (its EOS, pad and chat template).
        return manifest.tokenizer.load()
    from rayreward.data.tokenizer import load_tokenizer

    adapter = os.path.join(folder, "adapter_config.json")
    if os.path.exists(adapter):
        # An adapter saved without its tokenizer reads text as its base model does.
        with open(adapter, encoding="utf-8") as f:
            config = json.load(f)
        base = config.get("base_model_name_or_path")
        if base:
            return load_tokenizer(base, **({"revision": config["revision"]} if config.get("revision") else {}))
    return None
