"""What the trainer and the pipeline ask of a task, and the batch a trainer hands to it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from latentfm.condition import Condition
from latentfm.errors import LatentFMError

Encode = Callable[[torch.Tensor], torch.Tensor]
"""Images in [-1, 1] to normalised latents: the autoencoder and latent normalisation of the model."""

Inputs = dict[str, torch.Tensor]
"""A task's per-sample inputs at sampling time, batch first at image resolution: ``image`` and ``mask`` (inpaint),
``map`` (semantic)."""


@dataclass
class TrainingBatch:
    """This rank's part of one training step's batch, as the trainer hands it to the task.

    Attributes:
        x1: normalised latents ``[B, C, h, w]`` (the data of the flow).
        labels: ``[B]`` class labels, or None.
        images: the images in [-1, 1] ``[B, C, H, W]`` the latents were encoded from (None from a latent cache).
        maps: uint8 class-id maps ``[B, 1, H, W]`` of ``data.maps_path``, flipped with the images, or None.
        low_latents: normalised latents of the images down-sampled, from ``data.low_latent_cache``, or None.
        rows: the samples' rows in the step's global batch (``[B]``, on the batch's device).
        seeds: one seed per sample for the task's own draws (masks), from ``(train.seed, step, row)`` so that
            any number of ranks draws what one process draws.
    """

    x1: torch.Tensor
    labels: torch.Tensor | None
    images: torch.Tensor | None = None
    maps: torch.Tensor | None = None
    low_latents: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    seeds: list[int] | None = None


class Task(Protocol):
    """A kind of condition. The trainer, the pipeline and the command line ask it and never branch on its kind."""

    kind: str
    needs_images: bool  # training needs the images themselves, not only their latents
    uses_labels: bool  # the model gets the data's class labels
    needs_low_latents: bool  # training reads latents of down-sampled images (``data.low_latent_cache``)
    needs_maps: bool  # training reads a class-id map per image (``data.maps_path``); implies needs_images
    noise_source: bool  # the flow starts from standard normal noise (the sde solver's assumption)

    def model_inputs(self, latent_shape: tuple[int, ...], image_shape: tuple[int, ...]) -> dict[str, Any]:
        """``build_model`` keywords for the task's condition: ``concat_channels`` and a ``concat_encoder``."""
        ...

    def training_condition(self, batch: TrainingBatch, encode: Encode) -> Condition:
        """The condition of a training batch."""
        ...

    def sampling_condition(
        self, labels: torch.Tensor | None, inputs: Inputs | None, encode: Encode, image_shape: tuple[int, ...]
    ) -> Condition:
        """The condition of a batch of samples a user asks for: ``labels`` and the task's ``inputs`` (None: the
        task's unconditional inputs, where it was trained for them). ``image_shape`` is the batch's [N, C, H, W]."""
        ...

    def source(self, cond: Condition, noise: torch.Tensor) -> torch.Tensor:
        """The flow's source x0 for a batch with condition ``cond``, from standard normal ``noise``."""
        ...

    def unconditional(self, cond: Condition, null_label: int) -> Condition | None:
        """What the unguided half of classifier-free guidance sees, or None when there is nothing to drop."""
        ...

    def preview_inputs(self, batch: TrainingBatch) -> Inputs | None:
        """Sampling inputs made from real data, for the trainer's sample grids (None for tasks without inputs)."""
        ...

    def coupling_groups(self, batch: TrainingBatch) -> torch.Tensor | None:
        """Which rows of the global batch a coupling may pair with each other (equal values), or None for any."""
        ...


def null_labels(cond: Condition, null_label: int) -> torch.Tensor | None:
    """``cond``'s labels all set to the null label (None without labels)."""
    return None if cond.labels is None else torch.full_like(cond.labels, null_label)


def check_input_names(kind: str, inputs: Inputs | None, expected: set[str]) -> None:
    """Refuse inputs another task takes, in one line naming both."""
    given = set(inputs or {})
    if given and given != expected:
        wanted = " and ".join(sorted(expected)) or "no inputs besides labels"
        raise LatentFMError(f"this checkpoint's task is {kind}: it takes {wanted}, not {' and '.join(sorted(given))}")


def require_images(kind: str, batch: TrainingBatch) -> torch.Tensor:
    """The batch's images, or one line saying that the task cannot train from a latent cache."""
    if batch.images is None:
        raise LatentFMError(f"task.kind={kind} builds its condition from the images: unset data.latent_cache")
    return batch.images
