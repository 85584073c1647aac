"""The reward model: loading it, finding its head, getting it ready to train (pad, dropout, PEFT)."""

from __future__ import annotations

import logging
import warnings
import weakref
from dataclasses import dataclass
from typing import Any

from torch import nn

logger = logging.getLogger(__name__)

# Attribute names of the scalar head across architectures (Llama/GPT-2/Qwen: score,
# BERT/RoBERTa/DeBERTa: classifier).
HEAD_NAMES = ("score", "classifier")


def load_reward_model(name_or_path: str, **kwargs):
    """Loads a sequence-classification model with one output, or builds a built-in one.

    The weights load in float32 whatever the checkpoint's dtype: they are the master
    weights the optimizer updates, and bf16 weights silently lose updates smaller than
    their resolution. bf16/fp16 compute comes from ``RewardConfig(bf16=True)`` (autocast)
    or DeepSpeed's mixed precision. ``dtype`` in ``kwargs`` ("bfloat16", "auto", a
    ``torch.dtype``) is honoured, with a warning when it leaves the weights in low precision.

    Args:
        name_or_path: a hub id, a folder, or ``builtin:tiny-llama`` and the like.
        **kwargs: ``from_pretrained`` keyword arguments (``num_labels`` is 1 unless given: a
            multi-attribute model has one output per attribute).
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    from rayreward.core import tiny
    from rayreward.data.tokenizer import is_builtin, load_tokenizer

    if is_builtin(name_or_path):
        return tiny.build_model(name_or_path, load_tokenizer(name_or_path), num_labels=kwargs.get("num_labels", 1))
    kwargs = dict(kwargs)
    if "torch_dtype" in kwargs and "dtype" not in kwargs:
        kwargs["dtype"] = kwargs.pop("torch_dtype")
    dtype = kwargs.get("dtype")
    asked = dtype is not None
    if dtype is None:
        kwargs["dtype"] = torch.float32
    elif isinstance(dtype, str) and dtype != "auto":
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"dtype: got {dtype!r}; expected 'auto', 'float32', 'bfloat16', 'float16' or a torch.dtype")
        kwargs["dtype"] = getattr(torch, dtype)
    kwargs["num_labels"] = kwargs.get("num_labels", 1)  # more than 1: one output per reward attribute
    model = AutoModelForSequenceClassification.from_pretrained(name_or_path, **kwargs)
    if asked and warn_if_low_precision(model, f"dtype={dtype!r} was asked for when loading {name_or_path}"):
        _LOW_PRECISION_ASKED.add(model)
    return model


# Models whose low-precision weights were asked for explicitly (and warned about):
# `keep_fp32_master_weights` leaves them as they are.
_LOW_PRECISION_ASKED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


def keep_fp32_master_weights(model: nn.Module) -> nn.Module:
    """Casts a bf16/fp16 model to float32 so that the optimizer updates float32 weights.

    Left alone: models whose low precision was asked for (``load_reward_model`` with a
    ``dtype``, warned there), quantized models, and ZeRO-3 partitioned parameters
    (DeepSpeed's own mixed precision keeps float32 master partitions).
    """
    import torch

    if model in _LOW_PRECISION_ASKED or getattr(model, "is_quantized", False):
        return model
    params = list(model.parameters())
    if any(hasattr(p, "ds_id") for p in params):
        return model
    low = {p.dtype for p in params if p.dtype in (torch.bfloat16, torch.float16)}
    if low:
        logger.warning(
            "the model's weights are %s; training keeps float32 master weights (bf16/fp16 compute comes from "
            "RewardConfig(bf16=True) / fp16=True)", ", ".join(sorted(str(d).removeprefix("torch.") for d in low)),
        )
        model.to(torch.float32)
    return model


LOW_PRECISION_RISK = (
    "the optimizer then updates {dtype} weights directly, and an update smaller than about 1/256 of a "
    "weight (bf16) or 1/2048 (fp16) rounds to nothing: parameters can silently stop learning (norms and "
    "biases first). Load float32 weights (leave dtype unset) and get {dtype} compute from bf16=True/fp16=True."
)


def warn_if_low_precision(model: nn.Module, why: str) -> bool:
    """Warns, naming the risk, when trainable weights of ``model`` are bf16/fp16. Returns True when it warned."""
    import torch

    low = {p.dtype for p in model.parameters() if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16)}
    if not low:
        return False
    dtype = str(sorted(low, key=str)[0]).removeprefix("torch.")
    warnings.warn(f"pure {dtype} weights ({why}): " + LOW_PRECISION_RISK.format(dtype=dtype), stacklevel=3)
    return True


def ensure_pad_token(tokenizer, model=None) -> None:
    """Gives the tokenizer a pad token (EOS, as TRL does) and mirrors it on the model."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"the tokenizer {type(tokenizer).__name__} has neither a pad nor an EOS token; "
                "add one with tokenizer.add_special_tokens({'pad_token': '<pad>'}) and resize the model's embeddings"
            )
        tokenizer.pad_token = tokenizer.eos_token
        logger.warning("the tokenizer had no pad token; using its EOS token %r", tokenizer.eos_token)
    if model is not None:
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        if config.pad_token_id != tokenizer.pad_token_id:
            config.pad_token_id = tokenizer.pad_token_id
            model.config.pad_token_id = tokenizer.pad_token_id


def warn_if_pad_is_final_eos(tokenizer, pairs: list[dict[str, Any]]) -> bool:
    """Warns when pad == EOS and sequences end with EOS: rewards would be read too early.

    A decoder reward model reads its reward at the last token that is not padding;
    when the pad token is EOS, a final EOS counts as padding and the reward is read
    one token before it. Returns True when it warned.
    """
    eos = tokenizer.eos_token_id
    if eos is None or tokenizer.pad_token_id != eos or not pairs:
        return False
    ending = sum(p["input_ids_chosen"][-1] == eos for p in pairs)
    if ending == 0:
        return False
    warnings.warn(
        f"the pad token is the EOS token ({tokenizer.eos_token!r}) and {ending} of {len(pairs)} chosen "
        "sequences end with it: the model will read their reward at the token before the final EOS. "
        "Give the tokenizer a distinct pad token (tokenizer.add_special_tokens({'pad_token': '<pad>'}) "
        "and model.resize_token_embeddings(len(tokenizer))).",
        stacklevel=3,
    )
    return True


# Attention dropout is often not an nn.Dropout module but a float the attention layer
# passes to its kernel (Llama, Qwen, Mistral: `attention_dropout`; BERT/GPT-2 read the
# module's `p`); both kinds are zeroed.
_DROPOUT_FLOAT_ATTRS = ("attention_dropout", "dropout", "dropout_p", "attn_dropout")


def disable_dropout(model: nn.Module) -> None:
    """Sets every dropout probability of ``model`` (modules, attention floats, config) to 0."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
            continue
        for attr in _DROPOUT_FLOAT_ATTRS:
            if isinstance(getattr(module, attr, None), float):
                setattr(module, attr, 0.0)
        config = getattr(module, "config", None)
        # Keep the saved config truthful: an export reloaded for more training has no dropout either.
        for key, value in (vars(config).items() if config is not None and hasattr(config, "__dict__") else []):
            if isinstance(value, float) and ("dropout" in key or key.endswith("_pdrop")):
                setattr(config, key, 0.0)


def head_module_names(model: nn.Module) -> list[str]:
    return [name for name in HEAD_NAMES if isinstance(getattr(model, name, None), nn.Module)]


def wrap_peft(model: nn.Module, peft_config):
    """Wraps ``model`` with PEFT for sequence classification, training the head too."""
    import dataclasses

    from peft import TaskType, get_peft_model

    heads = head_module_names(model)
    if not heads:
        raise ValueError(
            f"cannot find the reward head of {type(model).__name__} (looked for {', '.join(HEAD_NAMES)}); "
            "set peft_config.modules_to_save to its module name"
        )
    changes: dict[str, Any] = {}
    if getattr(peft_config, "task_type", None) not in (TaskType.SEQ_CLS, "SEQ_CLS"):
        if getattr(peft_config, "task_type", None) is not None:
            logger.warning("peft_config.task_type %s replaced by SEQ_CLS for a reward model", peft_config.task_type)
        changes["task_type"] = TaskType.SEQ_CLS
    to_save = list(getattr(peft_config, "modules_to_save", None) or [])
    missing = [h for h in heads if h not in to_save]
    if missing:
        changes["modules_to_save"] = to_save + missing
    if changes:
        peft_config = dataclasses.replace(peft_config, **changes)
    wrapped = get_peft_model(model, peft_config)
    freeze_replaced_heads(wrapped)
    return wrapped


def freeze_replaced_heads(model: nn.Module) -> None:
    """Freezes the original of every module PEFT trains a copy of (``modules_to_save``).

    The forward pass runs the copy (``score.modules_to_save.default``); a trainable
    original (``score.original_module``) would never change yet hold optimizer state,
    and TRL 1.16's check that every trainable parameter moved would fail on it.
    """
    for name, module in model.named_modules():
        original = getattr(module, "original_module", None)
        if isinstance(original, nn.Module) and hasattr(module, "modules_to_save"):
            original.requires_grad_(False)


def prepare_model(model: nn.Module, args, peft_config=None):
    """Applies the config's model settings (fp32 master weights, dropout, cache, PEFT, checkpointing hooks)."""
    wanted = getattr(args, "num_labels", 1)
    if wanted != 1 and getattr(model.config, "num_labels", 1) != wanted:
        raise ValueError(
            f"The model has num_labels={model.config.num_labels}, but the config names {wanted} attributes "
            f"({', '.join(args.attributes)}); build or load it with num_labels={wanted}, one output per attribute, "
            "or pass its name as a string"
        )
    if wanted == 1 and getattr(model.config, "num_labels", 1) != 1:
        raise ValueError(
            f"The model has num_labels={model.config.num_labels}, but reward models require num_labels=1 "
            "(one scalar reward per sequence); load it with "
            "AutoModelForSequenceClassification.from_pretrained(..., num_labels=1) or pass its name as a string"
        )
    keep_fp32_master_weights(model)
    if args.disable_dropout:
        disable_dropout(model)
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    if peft_config is not None:
        if args.activation_checkpointing and hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
        model = wrap_peft(model, peft_config)
    return model


@dataclass(frozen=True)
class BaseModelSpec:
    """The model a run starts from, as ``from_pretrained`` is asked for it.

    Attributes:
        name_or_path: a hub id, a folder, or ``builtin:tiny-llama`` and the like.
        revision: the hub revision (branch, tag or commit); None for the default branch.
        dtype: ``auto`` (float32 master weights whatever the checkpoint holds), or an
            explicit ``bfloat16``/``float16``/``float32``.
        attn_implementation: the attention kernel (``sdpa``, ``eager``, ...); None lets
            transformers choose.
        trust_remote_code: run model code shipped with a hub checkpoint.
    """

    name_or_path: str
    revision: str | None = None
    dtype: str = "auto"
    attn_implementation: str | None = None
    trust_remote_code: bool = False


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapters on a reward model (the reward head is trained in full).

    Attributes:
        r: rank of the adapters.
        alpha: scaling numerator (``lora_alpha``).
        dropout: dropout on the adapters' input.
        target_modules: module names, or ``all-linear``.
    """

    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"


def load_base_model(spec: BaseModelSpec, num_labels: int = 1, seed: int | None = None):
    """The model a run trains (or a checkpoint's base), loaded as ``spec`` says, with one
    head output per reward attribute (``num_labels``).

    ``dtype: auto`` loads float32 master weights whatever the checkpoint holds; an
    explicit ``bfloat16``/``float16`` is honoured with a warning naming the risk.
    ``seed`` (the run's ``train.seed``) seeds the random initialisation of what the
    checkpoint lacks (a pretrained model's new reward head), as the in-process trainer
    seeds a model it loads by id: a run is then repeatable.
    """
    if seed is not None:
        from transformers import set_seed

        set_seed(seed)
    kwargs: dict[str, Any] = {}
    if spec.dtype != "auto":
        kwargs["dtype"] = spec.dtype
    if spec.attn_implementation:
        kwargs["attn_implementation"] = spec.attn_implementation
    if spec.trust_remote_code:
        kwargs["trust_remote_code"] = True
    if spec.revision:
        kwargs["revision"] = spec.revision
    if num_labels != 1:  # one output per reward attribute
        kwargs["num_labels"] = num_labels
    return load_reward_model(spec.name_or_path, **kwargs)


def peft_config_for(lora: LoraSpec | None):
    """A PEFT ``LoraConfig`` for sequence classification, or None without LoRA."""
    if lora is None:
        return None
    from peft import LoraConfig, TaskType

    targets = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    return LoraConfig(task_type=TaskType.SEQ_CLS, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=targets)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The ``transformers`` model inside DDP / DeepSpeed / compile and PEFT wrappers."""
    from accelerate.utils import extract_model_from_parallel

    model = extract_model_from_parallel(model)
    if hasattr(model, "get_base_model"):  # PEFT
        model = model.get_base_model()
    return model


def reward_head(model: nn.Module) -> nn.Module:
    """The per-token scalar head (``score``) of a decoder sequence-classification model."""
    head = getattr(model, "score", None)
    if not isinstance(head, nn.Module):
        raise ValueError(
            f"{type(model).__name__} has no per-token 'score' head (decoder sequence-classification models "
            "have one; encoders pool a first token into 'classifier' instead)"
        )
    return head


def attention_implementation(model: nn.Module) -> str:
    """The attention kernel the model was loaded with (``sdpa``, ``eager``, ...)."""
    from rayreward.runtime._framework_internals import loaded_attention

    return loaded_attention(model)


def text_config(model: nn.Module):
    """The text part of a model's config (the config itself for text-only models)."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config
