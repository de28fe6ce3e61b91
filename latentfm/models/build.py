"""Building a backbone from a ModelConfig."""

from __future__ import annotations

from torch import nn

from latentfm.config import ModelConfig
from latentfm.errors import LatentFMError
from latentfm.models.dit import DIT_SIZES, DiT, parse_dit_name


def build_model(
    config: ModelConfig, in_channels: int, image_size: int, num_classes: int, concat_channels: int = 0
) -> nn.Module:
    """The backbone ``config`` describes for inputs of ``in_channels`` × ``image_size``²."""
    if config.arch != "dit":
        raise LatentFMError(f"model.arch={config.arch!r} is unknown; available: 'dit'")
    shape = dict(
        patch_size=config.patch_size, hidden_size=config.hidden_size, depth=config.depth, num_heads=config.num_heads
    )
    if config.size is not None:
        size, patch = parse_dit_name(config.size)
        shape = dict(DIT_SIZES[size], patch_size=patch)
    return DiT(
        in_channels=in_channels,
        image_size=image_size,
        mlp_ratio=config.mlp_ratio,
        num_classes=num_classes,
        class_dropout=config.class_dropout,
        concat_channels=concat_channels,
        grad_checkpointing=config.grad_checkpointing,
        **shape,
    )
