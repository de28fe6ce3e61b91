"""The ``semantic`` task (LFM, Dao et al. 2023): generate an image that follows a map of class ids.

The condition is the one-hot map at image resolution; the model's ``MapRescaler`` (trained, EMA'd and
checkpointed with it) brings it to latent resolution, and the result is concatenated to ``x_t``. Maps come from
the data (``data.maps_path``, e.g. CelebAMask-HQ's face parts) or are derived from each image by the
``intensity`` rule: class ``i`` holds the pixels whose 8-bit grey level lies in ``[bands[i-1], bands[i])``
(``bands = [32, 128]``: background, dark, light), which makes the task checkable on any grey data: derive the
map of a generated image again and compare. With ``map_dropout`` the model also learns the empty map, so
guidance can drop the map along with the label.
"""

from __future__ import annotations

from typing import Any

import torch

from latentfm.condition import Condition
from latentfm.data.maps import one_hot_maps
from latentfm.errors import LatentFMError
from latentfm.image_io import quantise
from latentfm.models.rescaler import MapRescaler
from latentfm.tasks.base import Encode, Inputs, TrainingBatch, check_input_names, null_labels, require_images

MAP_SOURCES = ("intensity", "data")


def intensity_maps(images: torch.Tensor, bands: list[int]) -> torch.Tensor:
    """The ``intensity`` rule: class ids ``[B, 1, H, W]`` of images in [-1, 1] from their 8-bit grey levels
    (the channel mean for colour images): class ``i`` for levels in ``[bands[i-1], bands[i])``.

    Example:
        >>> images = torch.tensor([[[[-1.0, -0.6, 0.2, 1.0]]]])  # 8-bit levels 0, 51, 153, 255
        >>> intensity_maps(images, [32, 128]).tolist()
        [[[[0, 1, 2, 2]]]]
    """
    grey = quantise(images).float().mean(dim=1, keepdim=True)
    return torch.bucketize(grey, torch.tensor(bands, dtype=grey.dtype, device=grey.device), right=True)


class SemanticTask:
    """A class-id map (and optionally a label) as the condition (see the module docstring).

    Example:
        >>> task = SemanticTask(source="intensity", bands=[32, 128])
        >>> images = torch.zeros(2, 1, 8, 8)
        >>> task.training_condition(TrainingBatch(images, None, images=images), encode=None).concat.shape
        torch.Size([2, 3, 8, 8])
    """

    kind = "semantic"
    needs_images = True
    needs_low_latents = False
    noise_source = True
    uses_labels = True

    def __init__(
        self, source: str, bands: list[int] | None = None, classes: int = 0, channels: int = 8, dropout: float = 0.0
    ):
        if source not in MAP_SOURCES:
            raise LatentFMError(f"task.map_source={source!r} is unknown; use {' or '.join(MAP_SOURCES)}")
        if source == "intensity":
            bands = list(bands or [])
            if not bands or bands != sorted(set(bands)) or not 0 < bands[0] <= bands[-1] <= 255:
                raise LatentFMError(f"task.map_bands={bands}: give increasing grey levels in 1..255")
            classes = len(bands) + 1
        elif classes < 2:
            raise LatentFMError(f"task.map_classes={classes}: maps from data need the number of classes (>= 2)")
        if channels < 1:
            raise LatentFMError(f"task.map_channels={channels}: the rescaler needs at least 1 output channel")
        if not 0.0 <= dropout < 1.0:
            raise LatentFMError(f"task.map_dropout={dropout} must lie in [0, 1)")
        self.needs_maps = source == "data"
        self.map_source, self.bands, self.classes, self.channels, self.dropout = (
            source,
            bands,
            classes,
            channels,
            dropout,
        )

    def model_inputs(self, latent_shape: tuple[int, ...], image_shape: tuple[int, ...]) -> dict[str, Any]:
        """``map_channels`` channels made by a ``MapRescaler`` from image to latent resolution."""
        factor = image_shape[-1] // latent_shape[-1]
        rescaler = MapRescaler(self.classes, self.channels, factor, self.dropout)
        return {"concat_channels": self.channels, "concat_encoder": rescaler}

    def maps(self, batch: TrainingBatch) -> torch.Tensor:
        """The batch's class-id maps: derived from its images, or read with them."""
        if self.map_source == "intensity":
            return intensity_maps(require_images(self.kind, batch), self.bands)
        if batch.maps is None:
            raise LatentFMError("task.map_source=data needs maps: set data.maps_path to a folder of class-id PNGs")
        return batch.maps

    def training_condition(self, batch: TrainingBatch, encode: Encode) -> Condition:
        """The labels and the one-hot maps (map dropout happens in the model's rescaler)."""
        return Condition(labels=batch.labels, concat=one_hot_maps(self.maps(batch), self.classes))

    def sampling_condition(
        self, labels: torch.Tensor | None, inputs: Inputs | None, encode: Encode, image_shape: tuple[int, ...]
    ) -> Condition:
        """The one-hot ``inputs["map"]`` ([N, 1, H, W] class ids); without a map, the empty map (only for a
        model trained with map dropout)."""
        check_input_names(self.kind, inputs, {"map"})
        n, _, height, width = image_shape
        if not inputs:
            if self.dropout == 0:
                raise LatentFMError("this model never trained without a map (task.map_dropout=0): give a map")
            return Condition(labels=labels, concat=torch.zeros(n, self.classes, height, width))
        maps = inputs["map"]
        if tuple(maps.shape[-2:]) != (height, width):
            raise LatentFMError(f"a map is {maps.shape[-1]}x{maps.shape[-2]}, the model makes {width}x{height} images")
        return Condition(labels=labels, concat=one_hot_maps(maps.view(-1, 1, height, width), self.classes))

    def source(self, cond: Condition, noise: torch.Tensor) -> torch.Tensor:
        """Standard normal noise."""
        return noise

    def unconditional(self, cond: Condition, null_label: int) -> Condition | None:
        """The null label, and the empty map when the model trained with map dropout."""
        if self.dropout == 0:
            return None if cond.labels is None else Condition(labels=null_labels(cond, null_label), concat=cond.concat)
        return Condition(labels=null_labels(cond, null_label), concat=torch.zeros_like(cond.concat))

    def preview_inputs(self, batch: TrainingBatch) -> Inputs | None:
        """The batch's maps."""
        return {"map": self.maps(batch)}

    def coupling_groups(self, batch: TrainingBatch) -> torch.Tensor | None:
        """Every row its own group (the coupling is then the independent one)."""
        return batch.rows
