"""The ``class`` task: generation from a class label (or none), with classifier-free guidance."""

from __future__ import annotations

from typing import Any

import torch

from latentfm.condition import Condition
from latentfm.tasks.base import Encode, Inputs, TrainingBatch, check_input_names, null_labels


class ClassTask:
    """Class labels as the condition; a coupling pairs only inside a class.

    Example:
        >>> task = ClassTask()
        >>> batch = TrainingBatch(torch.zeros(2, 1, 4, 4), torch.tensor([3, 1]))
        >>> task.training_condition(batch, encode=None).labels.tolist()
        [3, 1]
        >>> task.unconditional(Condition(labels=torch.tensor([3])), null_label=10).labels.tolist()
        [10]
    """

    kind = "class"
    needs_images = False
    needs_low_latents = False
    noise_source = True
    needs_maps = False
    uses_labels = True

    def model_inputs(self, latent_shape: tuple[int, ...], image_shape: tuple[int, ...]) -> dict[str, Any]:
        """No condition channels."""
        return {}

    def training_condition(self, batch: TrainingBatch, encode: Encode) -> Condition:
        """The batch's labels (label dropout for guidance happens in the model)."""
        return Condition(labels=batch.labels)

    def sampling_condition(
        self, labels: torch.Tensor | None, inputs: Inputs | None, encode: Encode, image_shape: tuple[int, ...]
    ) -> Condition:
        """The requested labels (None: unconditional)."""
        check_input_names(self.kind, inputs, set())
        return Condition(labels=labels)

    def source(self, cond: Condition, noise: torch.Tensor) -> torch.Tensor:
        """Standard normal noise."""
        return noise

    def unconditional(self, cond: Condition, null_label: int) -> Condition | None:
        """The null label."""
        return None if cond.labels is None else Condition(labels=null_labels(cond, null_label))

    def preview_inputs(self, batch: TrainingBatch) -> Inputs | None:
        """None: class samples need no inputs."""
        return None

    def coupling_groups(self, batch: TrainingBatch) -> torch.Tensor | None:
        """The labels: minibatch OT pairs noise with data of one class only."""
        return batch.labels
