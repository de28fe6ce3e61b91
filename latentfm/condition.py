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
        step: ``[B]`` the time a few-step model jumps in one call (``t' - t``; 0 or None: the velocity at ``t``);
            a model without a step input ignores it.
    """

    labels: torch.Tensor | None = None
    concat: torch.Tensor | None = None
    step: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Condition:
        """The condition with its tensors on ``device``."""
        labels = None if self.labels is None else self.labels.to(device)
        concat = None if self.concat is None else self.concat.to(device)
        step = None if self.step is None else self.step.to(device)
        return Condition(labels=labels, concat=concat, step=step)

    def cat(self, other: Condition) -> Condition:
        """This batch followed by ``other``'s (for one batched guided call); both must hold the same fields.

        Example:
            >>> both = Condition(labels=torch.tensor([3])).cat(Condition(labels=torch.tensor([10])))
            >>> both.labels.tolist(), both.concat
            ([3, 10], None)
        """
        labels = None if self.labels is None else torch.cat([self.labels, other.labels])
        concat = None if self.concat is None else torch.cat([self.concat, other.concat])
        step = None if self.step is None else torch.cat([self.step, other.step])
        return Condition(labels=labels, concat=concat, step=step)

    def with_null_labels(self, drop: torch.Tensor, null_label: int) -> Condition:
        """This condition with the null label in the rows where ``drop`` ``[B]`` is set (no labels: unchanged).

        Example:
            >>> Condition(labels=torch.tensor([3, 4])).with_null_labels(torch.tensor([True, False]), 10).labels.tolist()
            [10, 4]
        """
        if self.labels is None:
            return self
        labels = torch.where(drop, torch.full_like(self.labels, null_label), self.labels)
        return Condition(labels=labels, concat=self.concat, step=self.step)

    def rows(self, index: torch.Tensor) -> Condition:
        """The condition of rows ``index`` of this batch."""
        pick = lambda value: None if value is None else value[index]  # noqa: E731
        return Condition(labels=pick(self.labels), concat=pick(self.concat), step=pick(self.step))

    def with_step(self, step: torch.Tensor | None) -> Condition:
        """This condition with the jump ``step`` ``[B]`` of a few-step model's call (None: none)."""
        return Condition(labels=self.labels, concat=self.concat, step=step)
