"""The one place that touches private ``transformers`` names (written against 5.24).

transformers has no public getter for the attention implementation a model was loaded
with: ``PreTrainedModel.set_attn_implementation`` is the public setter, but reading it
back goes through ``config._attn_implementation`` (a property over
``_attn_implementation_internal``) in every release up to 5.24. Everything else
rayreward needs from the attention machinery is public (``AttentionInterface``,
``AttentionMaskInterface``, ``set_attn_implementation``). If an upgrade renames the
attribute, this module is what breaks.
"""

from __future__ import annotations

from torch import nn


def loaded_attention(model: nn.Module) -> str:
    """The attention implementation of a ``transformers`` model (``"eager"`` when unset)."""
    return getattr(model.config, "_attn_implementation", None) or "eager"
