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

    def to(self, device: torch.device | str) -> Condition:
        """The condition with its tensors on ``device``."""
        labels = None if self.labels is None else self.labels.to(device)
        concat = None if self.concat is None else self.concat.to(device)
        return Condition(labels=labels, concat=concat)

    def cat(self, other: Condition) -> Condition:
        """This batch followed by ``other``'s (for one batched guided call); both must hold the same fields.

        Example:
            >>> both = Condition(labels=torch.tensor([3])).cat(Condition(labels=torch.tensor([10])))
            >>> both.labels.tolist(), both.concat
            ([3, 10], None)
        """
        labels = None if self.labels is None else torch.cat([self.labels, other.labels])
        concat = None if self.concat is None else torch.cat([self.concat, other.concat])
        return Condition(labels=labels, concat=concat)
