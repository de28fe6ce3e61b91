"""The ``upsample`` task ("boosting", Fischer et al. 2024): a flow from a small latent to a large one.

The data x1 is the latent of an image. The low-resolution input is the latent of the image down-sampled
``factor`` times (area): encoded at every step (``low_source: image``) or read from a cache of those latents
(``cache``: ``data.low_latent_cache``, written by ``latentfm encode --downsample F``, with ``--pixel-upsample``
for the ``pixel`` mode; the same inputs, encoded once); or, with ``low_source: latent``, the high-resolution
latent down-sampled in latent space.
It is brought back to the high latent resolution (``mode``: ``nearest`` or ``bilinear`` in latent space, or
``pixel``: the low-resolution image up-sampled bicubically and encoded again) and used twice: concatenated to x_t
as the condition, and, noised, as the source x0 of the flow (``noise: diffusion``: the forward-diffusion step
``diffusion_step`` of 1,000 of the cosine schedule, x0 = sqrt(a) up + sqrt(1 - a) eps with a the ᾱ of
``flow.paths.cosine_alpha_bar``, the paper's code uses 400; ``noise: sigma``: x0 = up + sigma eps).
The task trains without labels unless ``labels`` is set.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from latentfm.condition import Condition
from latentfm.errors import LatentFMError
from latentfm.flow.paths import cosine_alpha_bar
from latentfm.image_io import area_downsample, bicubic_upsample
from latentfm.tasks.base import Encode, Inputs, TrainingBatch, check_input_names, null_labels, require_images

MODES = ("nearest", "bilinear", "pixel")
LOW_SOURCES = ("image", "cache", "latent")
NOISES = ("diffusion", "sigma")


class UpsampleTask:
    """A low-resolution latent as the condition and, noised, as the source (see the module docstring).

    Example:
        >>> task = UpsampleTask(factor=2)
        >>> images = torch.zeros(2, 1, 8, 8)
        >>> cond = task.training_condition(TrainingBatch(images, None, images=images), encode=lambda x: x)
        >>> cond.concat.shape, task.source(cond, torch.zeros(2, 1, 8, 8)).shape
        (torch.Size([2, 1, 8, 8]), torch.Size([2, 1, 8, 8]))
    """

    kind = "upsample"
    noise_source = False  # the noised up-sampled low-resolution latent

    def __init__(
        self,
        factor: int = 2,
        mode: str = "bilinear",
        low_source: str = "image",
        noise: str = "diffusion",
        diffusion_step: int = 400,
        sigma: float = 0.1,
        labels: bool = False,
    ):
        for value, options, key in (
            (mode, MODES, "mode"),
            (low_source, LOW_SOURCES, "low_source"),
            (noise, NOISES, "noise"),
        ):
            if value not in options:
                raise LatentFMError(f"task.upsample_{key}={value!r} is unknown; use one of {', '.join(options)}")
        if factor not in (2, 4):
            raise LatentFMError(f"task.upsample_factor={factor}: use 2 or 4")
        if low_source == "latent" and mode == "pixel":
            raise LatentFMError(
                "task.upsample_mode=pixel re-encodes images: use task.upsample_low_source=image or cache"
            )
        if not 0 <= diffusion_step < 1000 or sigma < 0:
            raise LatentFMError(
                f"task.upsample_diffusion_step={diffusion_step} (0..999), upsample_sigma={sigma} (>= 0)"
            )
        self.factor, self.mode, self.low_source = factor, mode, low_source
        self.uses_labels, self.needs_images = labels, low_source == "image"
        self.needs_low_latents = low_source == "cache"
        self.needs_maps = False
        alpha_bar = cosine_alpha_bar(diffusion_step)
        self.signal, self.noise = (
            (math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)) if noise == "diffusion" else (1.0, sigma)
        )

    def model_inputs(self, latent_shape: tuple[int, ...], image_shape: tuple[int, ...]) -> dict[str, Any]:
        """The up-sampled low-resolution latent: as many channels as the latent."""
        if latent_shape[-1] % self.factor or image_shape[-1] % self.factor:
            raise LatentFMError(f"latents of {latent_shape[-1]}² do not divide by task.upsample_factor={self.factor}")
        return {"concat_channels": latent_shape[0]}

    def low_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images down-sampled ``factor`` times by area averaging (the training inputs)."""
        return area_downsample(images, self.factor)

    def up(self, low: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Latents (or images) brought to ``size`` in the task's latent-space mode."""
        mode = "nearest" if self.mode == "nearest" else "bilinear"
        return F.interpolate(low, size=size, mode=mode, align_corners=None if mode == "nearest" else False)

    def condition_of_images(self, labels: torch.Tensor | None, low: torch.Tensor, encode: Encode) -> Condition:
        """The condition of low-resolution images in [-1, 1]."""
        if self.mode == "pixel":
            return Condition(labels=labels, concat=encode(bicubic_upsample(low, self.factor)))
        latents = encode(low)
        return Condition(
            labels=labels, concat=self.up(latents, (latents.shape[-2] * self.factor, latents.shape[-1] * self.factor))
        )

    def low_latents(self, batch: TrainingBatch) -> torch.Tensor:
        """The batch's low-resolution latents (in ``pixel`` mode: of the inputs up-sampled in pixels) from the
        low-resolution cache, or the latents down-sampled."""
        if self.low_source == "latent":
            return F.avg_pool2d(batch.x1, self.factor)
        low = batch.low_latents
        if low is None:
            raise LatentFMError("task.upsample_low_source=cache reads data.low_latent_cache: set it")
        pixel = self.mode == "pixel"
        if low.shape[-1] * (1 if pixel else self.factor) != batch.x1.shape[-1]:
            flags = f"--downsample {self.factor}" + (" --pixel-upsample" if pixel else "")
            raise LatentFMError(
                f"data.low_latent_cache holds {low.shape[-1]}² latents, the data {batch.x1.shape[-1]}²: "
                f"encode it with {flags} for task.upsample_factor={self.factor}, upsample_mode={self.mode}"
            )
        return low

    def cached_condition(self, low: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The condition of cached low-resolution latents: brought up to ``size`` (a ``pixel`` cache's already are)."""
        return low if self.mode == "pixel" else self.up(low, size)

    def training_condition(self, batch: TrainingBatch, encode: Encode) -> Condition:
        """The batch's images (or latents) down-sampled and brought back up."""
        labels = batch.labels if self.uses_labels else None
        if self.low_source != "image":
            return Condition(labels=labels, concat=self.cached_condition(self.low_latents(batch), batch.x1.shape[-2:]))
        return self.condition_of_images(labels, self.low_images(require_images(self.kind, batch)), encode)

    def sampling_condition(
        self, labels: torch.Tensor | None, inputs: Inputs | None, encode: Encode, image_shape: tuple[int, ...]
    ) -> Condition:
        """``inputs["low"]``: low-resolution images [N, C, H / factor, W / factor] in [-1, 1]; or
        ``inputs["low_latent"]``: their normalised latents (a cascade's, never decoded); or ``inputs["up_latent"]``:
        the condition itself, latents of the inputs already at the model's size (a pixel-mode cache's)."""
        if not inputs:
            raise LatentFMError("an upsampling model needs low-resolution inputs: give images or latents")
        name = next((key for key in ("low_latent", "up_latent") if key in inputs), "low")
        check_input_names(self.kind, inputs, {name})
        low = inputs[name]
        if name == "up_latent":
            return Condition(labels=labels, concat=low)
        if name == "low":
            expected = (image_shape[1], image_shape[2] // self.factor, image_shape[3] // self.factor)
            if tuple(low.shape[1:]) != expected:
                raise LatentFMError(
                    f"low-resolution inputs are {'x'.join(map(str, low.shape[1:]))} (CxHxW); this model "
                    f"up-samples {'x'.join(map(str, expected))} to {'x'.join(map(str, image_shape[1:]))}"
                )
            return self.condition_of_images(labels, low, encode)
        if self.mode == "pixel":
            raise LatentFMError("this model re-encodes up-sampled pixels (upsample_mode=pixel): give images")
        return Condition(labels=labels, concat=self.up(low, (low.shape[-2] * self.factor, low.shape[-1] * self.factor)))

    def source(self, cond: Condition, noise: torch.Tensor) -> torch.Tensor:
        """The flow's source: the up-sampled latent, noised."""
        return self.signal * cond.concat + self.noise * noise

    def unconditional(self, cond: Condition, null_label: int) -> Condition | None:
        """The null label with the same low-resolution input (None without labels)."""
        return None if cond.labels is None else Condition(labels=null_labels(cond, null_label), concat=cond.concat)

    def preview_inputs(self, batch: TrainingBatch) -> Inputs | None:
        """The batch's images (or latents) down-sampled."""
        if self.low_source != "image":
            return {"up_latent" if self.mode == "pixel" else "low_latent": self.low_latents(batch)}
        return {"low": self.low_images(require_images(self.kind, batch))}

    def coupling_groups(self, batch: TrainingBatch) -> torch.Tensor | None:
        """Every row its own group: the source belongs to its own data point."""
        return batch.rows
