"""The typed condition passed to every backbone: ``model(x, t, cond) -> v``."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Condition:
    """Optional conditioning inputs of a velocity model.

    Attributes:
        labels: ``[B]`` long class labels; the null label used for guidance is ``num_classes``.
        concat: ``[B, Cc, H, W]`` channels concatenated to the input (masks, masked latents, maps).
    """

    labels: torch.Tensor | None = None
    concat: torch.Tensor | None = None

    def repeat(self, times: int) -> Condition:
        """The condition repeated ``times`` along the batch dimension (for batched guidance)."""
        labels = None if self.labels is None else self.labels.repeat(times)
        concat = None if self.concat is None else self.concat.repeat(times, 1, 1, 1)
        return Condition(labels=labels, concat=concat)
