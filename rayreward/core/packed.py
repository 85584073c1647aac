"""Packed forward passes: one model call over packed pairs, and which models may pack.

The batch layout (rows of shared prefixes and continuations, their ids and masks) is
built by ``rayreward.data.packing``; this module runs a model over it and decides, per
model and config, which speed features are exact (see ``plan_packing``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from rayreward.core.attention import ANY_UNIT, build_layout, install, layout_kwargs, resolve_backend
from rayreward.core.model import attention_implementation, reward_head, text_config, unwrap_model
from rayreward.data.packing import PackedPairCollator, packed_attention_mask

logger = logging.getLogger(__name__)

# Decoder families whose attention takes a custom 4D mask and position ids unchanged
# (mask passed through `create_causal_mask`, RoPE or learned absolute positions);
# the exactness tests cover each of them. Other causal decoders pack on request only.
PACKABLE_MODEL_TYPES = ("llama", "gpt2", "mistral", "qwen2", "qwen3")
_MASKED_ATTENTION = ("sdpa", "eager", "rayreward_sdpa")


def packed_rewards(
    model: nn.Module, batch: Mapping[str, torch.Tensor], attention: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of the chosen and rejected sides of a packed batch, in pair order (fp32).

    The model is called through its own ``forward`` with the packed ids and position
    ids; a forward hook on the reward head catches its per-token scores, which are read
    at the last token of each sequence. Going through ``forward`` keeps DDP's gradient
    hooks, DeepSpeed ZeRO's parameter gathering and PEFT's adapters in play, so the
    function works unchanged inside the distributed trainer.

    Attention sees only what the packed layout allows, by one of the backends of
    ``rayreward.core.attention``: ``segment``/``varlen``/``flex`` compute only the
    unmasked blocks, ``banded`` the mask's blocks that hold any of them; ``dense``
    hands the model a 4D mask.

    Args:
        model: a causal-decoder sequence-classification model (possibly wrapped by
            DDP, DeepSpeed or PEFT) whose attention is ``sdpa`` or ``eager``.
        batch: the output of ``pack_pairs``, on the model's device.
        attention: ``auto`` (per device and model, see
            ``rayreward.core.attention.resolve_backend``) or a backend name.

    Returns:
        ``(rewards_chosen, rewards_rejected)``, each of shape ``(pairs,)``.

    Raises:
        ValueError: ``attention`` names a backend the model or device cannot run.
    """
    return read_rewards(packed_head_output(model, batch, attention), batch)


def packed_group_rewards(model: nn.Module, batch: Mapping[str, torch.Tensor], attention: str = "auto") -> torch.Tensor:
    """Head outputs ``(responses, num_labels)`` of a packed group batch (``pack_groups``), fp32.

    The same forward pass as ``packed_rewards``; the scores are read at the last token
    of each response (``response_index``).
    """
    scores = packed_head_output(model, batch, attention)
    ri = batch["response_index"]
    return scores[ri[:, 0], ri[:, 1], :].float()


def packed_head_output(model: nn.Module, batch: Mapping[str, torch.Tensor], attention: str = "auto") -> torch.Tensor:
    """The reward head's per-token output ``(rows, length, num_labels)`` over a packed batch."""
    inner = unwrap_model(model)
    head = reward_head(inner)
    ids = batch["packed_input_ids"]
    half = next(inner.parameters()).dtype in (torch.float16, torch.bfloat16) or torch.is_autocast_enabled(
        ids.device.type)
    backend = resolve_backend(inner, attention, ids.device, half)
    # A packed group (K responses after one prompt) has no pair units (see ANY_UNIT).
    if backend == "dense" or ("packed_units" not in batch and backend not in ANY_UNIT):
        kwargs = {"attention_mask": _dense_mask(inner, batch)}
    else:
        install(inner)
        kwargs = layout_kwargs(build_layout(batch, backend))
    caught: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda module, args, output: caught.append(output))
    try:
        model(input_ids=ids, position_ids=batch["packed_position_ids"], **kwargs)
    finally:
        handle.remove()
    return caught[-1]


def read_rewards(scores: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's scores at the last token of each chosen and rejected sequence (fp32)."""
    ci, ri = batch["chosen_index"], batch["rejected_index"]
    return scores[ci[:, 0], ci[:, 1], 0].float(), scores[ri[:, 0], ri[:, 1], 0].float()


def _dense_mask(inner: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    mask = packed_attention_mask(batch["packed_sequence_ids"], batch["packed_branch_ids"])
    if attention_implementation(inner) == "eager":
        # Eager attention adds the mask to the scores; sdpa takes the boolean mask.
        dtype = next(inner.parameters()).dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask


# -- which features a model gets -------------------------------------------------------


@dataclass(frozen=True)
class PackingMode:
    """The speed features in force for one model and config (see ``plan_packing``)."""

    group_by_length: bool = False
    padding_free: bool = False
    share_prefix: bool = False

    @property
    def packs(self) -> bool:
        return self.padding_free or self.share_prefix

    def group_collator(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        """The packing collator of ranked groups and ratings, or None when the plan does not pack."""
        if not self.packs:
            return None
        from rayreward.data.group_packing import PackedGroupCollator

        return PackedGroupCollator(pad_token_id, share_prefix=self.share_prefix, padding_free=self.padding_free,
                                   pad_to_multiple_of=pad_to_multiple_of)

    def collator(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> PackedPairCollator | None:
        """The packing collator, or None when the plan does not pack."""
        if not self.packs:
            return None
        return PackedPairCollator(
            pad_token_id, share_prefix=self.share_prefix, padding_free=self.padding_free,
            pad_to_multiple_of=pad_to_multiple_of,
        )


def plan_packing(model: nn.Module | None, args) -> PackingMode:
    """Resolves ``group_by_length``, ``padding_free`` and ``share_prefix`` for a model.

    ``None`` (auto) turns both packings on for the causal decoders of
    ``PACKABLE_MODEL_TYPES`` with ``sdpa`` or ``eager`` attention, where they are
    exact, and length grouping on wherever padding-free packing is off (encoders).
    Packed rows carry almost no padding, so grouping would save nothing there and would
    only change which pairs share a batch; left off, a packed run trains on the same
    batches, hence the same trajectory, as the plain path.

    Args:
        model: the model (possibly wrapped); None (``model_init``) packs nothing.
        args: anything with the three attributes, e.g. a ``RewardConfig``.

    Raises:
        ValueError: a packing switch is True for a model that cannot pack; the message
            says why.
    """
    grouping = getattr(args, "group_by_length", None)
    wanted = {k: getattr(args, k, None) for k in ("padding_free", "share_prefix")}
    if model is None:
        return PackingMode(group_by_length=True if grouping is None else bool(grouping))
    problem = packing_problem(model, getattr(args, "max_length", None))
    auto_ok = problem is None and _model_type(model) in PACKABLE_MODEL_TYPES
    resolved = {}
    for key, value in wanted.items():
        if value is None:
            resolved[key] = auto_ok
        elif value and problem is not None:
            raise ValueError(f"{key}=True: {problem}; set {key}=False (or leave it unset for automatic)")
        else:
            resolved[key] = bool(value)
    if problem is not None and any(v is None for v in wanted.values()):
        logger.info("packing is off for this model: %s", problem)
    grouping = not resolved["padding_free"] if grouping is None else bool(grouping)
    return PackingMode(group_by_length=grouping, **resolved)


def packing_problem(model: nn.Module, max_length: int | None = None) -> str | None:
    """Why ``model`` cannot be packed exactly, or None when it can."""
    inner = unwrap_model(model)
    name = type(inner).__name__
    try:
        reward_head(inner)
    except ValueError as err:
        return str(err)
    flags = [m.is_causal for m in inner.modules() if isinstance(getattr(m, "is_causal", None), bool)]
    if not flags or not all(flags):
        return (
            f"{name} has bidirectional attention (an encoder): packed sequences would change what each token "
            "sees, so packing is inexact there"
        )
    impl = attention_implementation(inner)
    if impl not in _MASKED_ATTENTION:
        return (
            f"{name} uses attn_implementation={impl!r}, which takes no custom 4D attention mask; "
            "load the model with attn_implementation='sdpa' (or 'eager') to pack"
        )
    config = text_config(inner)
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True) and (max_length is None or max_length > window):
        return (
            f"{name} has a sliding attention window of {window} tokens, which the packed mask does not apply; "
            f"packing is exact only with max_length <= {window}"
        )
    return None


def _model_type(model: nn.Module) -> str:
    return getattr(text_config(unwrap_model(model)), "model_type", "")




__all__ = ["PACKABLE_MODEL_TYPES", "PackingMode", "packed_group_rewards", "packed_rewards", "packing_problem", "plan_packing"]
