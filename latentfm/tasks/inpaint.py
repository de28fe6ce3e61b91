"""The ``inpaint`` task (LFM, Dao et al. 2023): complete the masked part of an image.

The condition is the latent of the masked image (pixels to generate set to 0, mid-grey) and the mask brought to
latent resolution by area averaging, concatenated to ``x_t`` (``C + 1`` channels). Training masks are drawn per
sample (``latentfm.data.masks``); a mask covering everything, drawn with a small probability, teaches the model
to generate from nothing, which is also what sampling without an image does. Guidance drops only the labels:
the image and the mask are always kept. A minibatch OT coupling pairs each row only with itself here (every
sample has its own condition; pairing across conditions would bias the source the sampler meets).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from latentfm.condition import Condition
from latentfm.data.masks import MaskSettings, draw_masks
from latentfm.errors import LatentFMError
from latentfm.tasks.base import Encode, Inputs, TrainingBatch, check_input_names, null_labels, require_images

MASK_GRID = 64  # masks of larger images are drawn on this grid and scaled up (keeps drawing cheap at 256²)


class InpaintTask:
    """Masked image and mask as the condition (see the module docstring).

    Example:
        >>> task = InpaintTask(MaskSettings())
        >>> images = torch.zeros(2, 1, 8, 8)
        >>> batch = TrainingBatch(images, None, images=images, rows=torch.arange(2), seeds=[0, 1])
        >>> task.training_condition(batch, encode=lambda x: x).concat.shape
        torch.Size([2, 2, 8, 8])
    """

    kind = "inpaint"
    needs_images = True
    needs_low_latents = False
    noise_source = True
    needs_maps = False
    uses_labels = True

    def __init__(self, masks: MaskSettings):
        self.masks = masks

    def model_inputs(self, latent_shape: tuple[int, ...], image_shape: tuple[int, ...]) -> dict[str, Any]:
        """The mask and the masked image's latent: ``C + 1`` channels."""
        return {"concat_channels": latent_shape[0] + 1}

    def condition(
        self, labels: torch.Tensor | None, images: torch.Tensor, masks: torch.Tensor, encode: Encode
    ) -> Condition:
        """The condition of ``images`` [B, C, H, W] in [-1, 1] to complete where ``masks`` [B, 1, H, W] is 1."""
        latents = encode(images * (1 - masks))
        small = F.adaptive_avg_pool2d(masks.to(latents), latents.shape[-2:])
        return Condition(labels=labels, concat=torch.cat([small, latents], dim=1))

    def training_masks(self, images: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        """One mask per sample, drawn from its seed: ``[B, 1, H, W]`` on the images' device."""
        size = images.shape[-1]
        grid = min(size, MASK_GRID)
        masks = torch.cat([draw_masks(1, grid, self.masks, torch.Generator().manual_seed(s)) for s in seeds])
        if grid != size:
            masks = F.interpolate(masks, size=images.shape[-2:], mode="nearest")
        return masks.to(images.device)

    def training_condition(self, batch: TrainingBatch, encode: Encode) -> Condition:
        """The batch's images under freshly drawn masks."""
        images = require_images(self.kind, batch)
        return self.condition(batch.labels, images, self.training_masks(images, batch.seeds), encode)

    def sampling_condition(
        self, labels: torch.Tensor | None, inputs: Inputs | None, encode: Encode, image_shape: tuple[int, ...]
    ) -> Condition:
        """``inputs["image"]`` completed where ``inputs["mask"]`` is 1; without inputs, the everything mask."""
        check_input_names(self.kind, inputs, {"image", "mask"})
        if not inputs:
            if self.masks.everything_probability == 0:
                raise LatentFMError("this inpainting model never trained without an image: give an image and a mask")
            n, _, height, width = image_shape
            inputs = {"image": torch.zeros(image_shape), "mask": torch.ones(n, 1, height, width)}
        return self.condition(labels, inputs["image"], inputs["mask"], encode)

    def source(self, cond: Condition, noise: torch.Tensor) -> torch.Tensor:
        """Standard normal noise."""
        return noise

    def unconditional(self, cond: Condition, null_label: int) -> Condition | None:
        """The null label with the same image and mask."""
        return None if cond.labels is None else Condition(labels=null_labels(cond, null_label), concat=cond.concat)

    def preview_inputs(self, batch: TrainingBatch) -> Inputs | None:
        """The batch's images under masks drawn as in training."""
        images = require_images(self.kind, batch)
        return {"image": images, "mask": self.training_masks(images, batch.seeds)}

    def coupling_groups(self, batch: TrainingBatch) -> torch.Tensor | None:
        """Every row its own group (the coupling is then the independent one)."""
        return batch.rows
