"""Several reward attributes in one model: what the exported config records, and the combination.

A multi-attribute reward model has one head output per attribute (``num_labels = A``).
Its config records, beside transformers' own ``id2label`` (the attribute names):

- ``rayreward_attributes``: the attribute names, in head order;
- ``rayreward_attribute_weights``: the weights of the combined reward
  ``sum(weight * attribute)``;
- ``rayreward_attribute_mean`` / ``rayreward_attribute_std`` (only when trained on
  standardised targets): the head predicts ``(rating - mean) / std``; ``attribute_values``
  maps it back to rating units.

A model without these keys is a one-output reward model: its one value is the reward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

NAMES_KEY, WEIGHTS_KEY = "rayreward_attributes", "rayreward_attribute_weights"
MEAN_KEY, STD_KEY = "rayreward_attribute_mean", "rayreward_attribute_std"


@dataclass(frozen=True)
class AttributeSpec:
    """The attributes of a model's head and how they combine into one reward."""

    names: tuple[str, ...]
    weights: tuple[float, ...]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def multi(self) -> bool:
        """Whether the model reports named attributes (anything but a plain scalar reward)."""
        return bool(self.names)

    def values(self, outputs: torch.Tensor) -> torch.Tensor:
        """Head outputs ``(n, A)`` -> attribute values in rating units (de-standardised)."""
        outputs = outputs.float()
        if self.mean is not None and self.std is not None:
            outputs = outputs * torch.tensor(self.std, device=outputs.device) + torch.tensor(
                self.mean, device=outputs.device)
        return outputs

    def combine(self, values: torch.Tensor) -> torch.Tensor:
        """Attribute values ``(n, A)`` -> the combined reward ``(n,)``."""
        if values.shape[-1] == 1 and not self.names:
            return values[..., 0]
        return values @ torch.tensor(self.weights, dtype=values.dtype, device=values.device)


SCALAR = AttributeSpec((), (1.0,))


def record_attributes(model, names: Sequence[str], weights: Sequence[float],
                      mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
    """Writes the attribute names, weights (and standardisation) into ``model.config``."""
    config = model.config
    setattr(config, NAMES_KEY, list(names))
    setattr(config, WEIGHTS_KEY, [float(w) for w in weights])
    config.id2label = {i: n for i, n in enumerate(names)}
    config.label2id = {n: i for i, n in enumerate(names)}
    if mean is not None and std is not None:
        setattr(config, MEAN_KEY, [float(m) for m in mean])
        setattr(config, STD_KEY, [float(s) for s in std])


def attribute_spec(config) -> AttributeSpec:
    """The ``AttributeSpec`` a model config records (``SCALAR`` when none)."""
    names = getattr(config, NAMES_KEY, None)
    if not names:
        return SCALAR
    weights = getattr(config, WEIGHTS_KEY, None) or [1.0 / len(names)] * len(names)
    mean, std = getattr(config, MEAN_KEY, None), getattr(config, STD_KEY, None)
    return AttributeSpec(tuple(names), tuple(float(w) for w in weights),
                         tuple(mean) if mean else None, tuple(std) if std else None)


__all__ = ["AttributeSpec", "SCALAR", "attribute_spec", "record_attributes"]
