"""The ``class`` task: generation from a class label (or none), with classifier-free guidance."""

from __future__ import annotations

from typing import Protocol

import torch

from latentfm.condition import Condition


class Task(Protocol):
    """What the trainer and the pipeline ask of a task."""

    kind: str

    def training_condition(self, x1: torch.Tensor, labels: torch.Tensor | None) -> Condition:
        """The condition of a training batch of data ``x1`` with its ``labels``."""
        ...

    def sampling_condition(self, labels: torch.Tensor | None) -> Condition:
        """The condition of samples a user asks for."""
        ...

    def coupling_groups(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """Which rows a coupling may pair with each other (equal values), or None for any."""
        ...


class ClassTask:
    """Class labels as the condition; a coupling pairs only inside a class.

    Example:
        >>> task = ClassTask()
        >>> task.training_condition(torch.zeros(2, 1, 4, 4), torch.tensor([3, 1])).labels.tolist()
        [3, 1]
        >>> task.sampling_condition(None)
        Condition(labels=None, concat=None)
    """

    kind = "class"

    def training_condition(self, x1: torch.Tensor, labels: torch.Tensor | None) -> Condition:
        """The batch's labels (label dropout for guidance happens in the model)."""
        return Condition(labels=labels)

    def sampling_condition(self, labels: torch.Tensor | None) -> Condition:
        """The requested labels (None: unconditional)."""
        return Condition(labels=labels)

    def coupling_groups(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """The labels: minibatch OT pairs noise with data of one class only."""
        return labels
