"""FlowTurbo's velocity refiner (Zhao et al. 2024): a small network that predicts how a trained flow model's
velocity changes over a short step, so that late sampling steps need no call of the large model.

``refiner(x', t', v, cond)`` returns ``Δv`` with ``v(x', t') ≈ v + Δv``, where ``v`` is the teacher's velocity at a
nearby earlier point. The network is one of the project's backbones, small: by default a DiT of a block or a few
on coarse patches (for UNet teachers too: a full-resolution conv refiner is nearly as slow as a small UNet
teacher), or a one-level UNet. It sees ``v`` and the task's concatenated condition as concat
channels, the labels through its adaLN / embedding, and its output layer starts at zero, so an untrained
refiner is the identity refinement ``v(x', t') = v``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from latentfm.condition import Condition
from latentfm.config import ModelConfig, RefinerConfig
from latentfm.errors import LatentFMError
from latentfm.models.build import build_model
from latentfm.models.unet import UNet


class VelocityRefiner(nn.Module):
    """``Δv = refiner(x, t, v, cond)`` (see the module docstring); ``net`` is a backbone whose concat channels
    are the velocity followed by the task's condition channels."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, t: torch.Tensor, v: torch.Tensor, cond: Condition | None = None) -> torch.Tensor:
        """The correction ``Δv`` to add to ``v`` for the velocity at ``(x, t)``."""
        cond = cond or Condition()
        concat = v.to(x.dtype) if cond.concat is None else torch.cat([v.to(x.dtype), cond.concat.to(x.dtype)], 1)
        return self.net(x, t, Condition(labels=cond.labels, concat=concat))


def refiner_network(
    refiner: RefinerConfig, teacher: ModelConfig, channels: int, size: int, num_classes: int, concat_channels: int
) -> nn.Module:
    """The refiner's backbone: a DiT of ``refiner.depth`` blocks on the teacher's patches (4×4 for a UNet teacher,
    2×2 where 4 does not divide the size), or a one-level UNet of ``model_channels`` at full resolution (its group
    norms use as many groups as divide the width). On 2 CPU cores the UNet refiner of 16 channels cost 92% of
    the Fashion-MNIST UNet teacher's time per call, the DiT refiner on 4×4 patches 2% (BENCHMARKS.md)."""
    arch = refiner.arch
    if arch == "dit":
        patch_size = refiner.patch_size or (teacher.patch_size if teacher.arch == "dit" else 4 - 2 * (size % 4 > 0))
        config = ModelConfig(
            arch="dit",
            patch_size=patch_size,
            hidden_size=refiner.hidden_size,
            depth=refiner.depth,
            num_heads=refiner.num_heads,
            class_dropout=0.0,  # the refiner trainer drops labels itself, identically for teacher and refiner
        )
        return build_model(config, channels, size, num_classes, concat_channels=concat_channels)
    if arch == "unet":
        width = refiner.model_channels
        return UNet(
            in_channels=channels,
            image_size=size,
            model_channels=width,
            channel_mult=(1,),
            num_res_blocks=refiner.num_res_blocks,
            attention_resolutions=(),
            num_head_channels=width,
            num_classes=num_classes,
            class_dropout=0.0,
            concat_channels=concat_channels,
            norm_groups=math.gcd(32, width),
        )
    raise LatentFMError(f"refiner.arch={arch!r} is unknown; use dit or unet")


def build_refiner(
    refiner: RefinerConfig,
    teacher: ModelConfig,
    latent_shape: tuple[int, ...],
    num_classes: int,
    concat_channels: int = 0,
    concat_encoder: nn.Module | None = None,
) -> VelocityRefiner:
    """The refiner of a teacher trained on ``latent_shape`` with ``num_classes`` and the task's inputs (the
    ``model_inputs`` keywords a task gives ``build_model``).

    Example:
        >>> from latentfm.config import ModelConfig, RefinerConfig
        >>> refiner = build_refiner(RefinerConfig(hidden_size=32), ModelConfig(patch_size=2), (1, 8, 8), 10)
        >>> x = torch.zeros(3, 1, 8, 8)
        >>> refiner(x, torch.zeros(3), x, Condition(labels=torch.zeros(3, dtype=torch.long))).abs().max().item()
        0.0
    """
    if concat_encoder is not None:
        raise LatentFMError("velocity refiners take tasks with plain concatenated inputs, not a semantic-map encoder")
    if refiner.delta_max <= 0 or refiner.delta_max > 1 or not 0 <= refiner.label_dropout < 1:
        raise LatentFMError(
            f"refiner.delta_max={refiner.delta_max} must lie in (0, 1] and refiner.label_dropout="
            f"{refiner.label_dropout} in [0, 1)"
        )
    channels, size = latent_shape[0], latent_shape[1]
    return VelocityRefiner(refiner_network(refiner, teacher, channels, size, num_classes, channels + concat_channels))
