"""Building a backbone from a ModelConfig, and the one registry of named sizes."""

from __future__ import annotations

from typing import Any

from torch import nn

from latentfm.config import ModelConfig
from latentfm.errors import LatentFMError
from latentfm.models.dit import DIT_SIZES, PATCH_SIZES, DiT, parse_dit_name
from latentfm.models.unet import UNet

UNET_SIZES: dict[str, dict[str, Any]] = {
    # CPU-sized, for 28×28 pixels or small latents
    "UNet-XS": dict(model_channels=32, channel_mult=[1, 2, 2], num_res_blocks=1, attention_resolutions=[7]),
    "UNet-S": dict(model_channels=64, channel_mult=[1, 2, 2], num_res_blocks=2, attention_resolutions=[7]),
    # ADM (Dhariwal & Nichol 2021, Table 11): class-conditional ImageNet 64×64 (296M) and 256×256 (554M) with
    # learned variance; build them with learn_sigma=True and 1000 classes for the published counts
    "ADM-64": dict(
        model_channels=192,
        channel_mult=[1, 2, 3, 4],
        num_res_blocks=3,
        attention_resolutions=[32, 16, 8],
        resblock_updown=True,
        dropout=0.1,
    ),
    "ADM-256": dict(
        model_channels=256,
        channel_mult=[1, 1, 2, 2, 4, 4],
        num_res_blocks=2,
        attention_resolutions=[32, 16, 8],
        resblock_updown=True,
    ),
    # LFM (Dao et al. 2023) on 32×32×4 SD-VAE latents of 256² images: its ImageNet ADM (407.4M with 1000 classes)
    # and CelebA-HQ ADM (153.1M, unconditional), counted from VinAIResearch/LFM's model code
    "LFM-ADM-256": dict(
        model_channels=256,
        channel_mult=[1, 2, 3, 4],
        num_res_blocks=2,
        attention_resolutions=[16, 8, 4],
        resblock_updown=True,
    ),
    "LFM-ADM-CelebA-256": dict(
        model_channels=256,
        channel_mult=[1, 2, 2, 2],
        num_res_blocks=2,
        attention_resolutions=[4],
    ),
}
"""Named UNet shapes; every key is a ``UNet`` keyword argument (attention at feature-map widths in pixels)."""

MODEL_SIZES: list[str] = [f"DiT-{size}/{patch}" for size in DIT_SIZES for patch in PATCH_SIZES] + list(UNET_SIZES)
"""Every name ``model.size`` accepts."""

ARCHS = ("dit", "unet")


def named_shape(name: str) -> tuple[str, dict[str, Any]]:
    """The architecture and shape keyword arguments of a named size.

    >>> named_shape("DiT-S/2")
    ('dit', {'depth': 12, 'hidden_size': 384, 'num_heads': 6, 'patch_size': 2})
    >>> named_shape("UNet-XS")[0]
    'unet'
    """
    if name in UNET_SIZES:
        return "unet", dict(UNET_SIZES[name])
    if name.startswith("DiT-"):
        size, patch = parse_dit_name(name)
        return "dit", dict(DIT_SIZES[size], patch_size=patch)
    raise LatentFMError(f"model.size={name!r} is unknown; valid names: {', '.join(MODEL_SIZES)}")


def _config_shape(config: ModelConfig) -> dict[str, Any]:
    """The shape fields of ``config`` for its architecture."""
    if config.arch == "dit":
        return dict(
            patch_size=config.patch_size,
            hidden_size=config.hidden_size,
            depth=config.depth,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
        )
    return dict(
        model_channels=config.model_channels,
        channel_mult=config.channel_mult,
        num_res_blocks=config.num_res_blocks,
        attention_resolutions=config.attention_resolutions,
        num_head_channels=config.num_head_channels,
        dropout=config.dropout,
        resblock_updown=config.resblock_updown,
        channels_last=config.channels_last,
    )


def build_model(
    config: ModelConfig,
    in_channels: int,
    image_size: int,
    num_classes: int,
    concat_channels: int = 0,
    concat_encoder: nn.Module | None = None,
) -> nn.Module:
    """The backbone ``config`` describes for inputs of ``in_channels`` × ``image_size``², with
    ``concat_channels`` condition channels (made from ``cond.concat`` by ``concat_encoder`` when given: a task's
    ``model_inputs`` say both)."""
    if config.arch not in ARCHS:
        raise LatentFMError(f"model.arch={config.arch!r} is unknown; available: {', '.join(ARCHS)}")
    shape = _config_shape(config)
    if config.size is not None:
        arch, named = named_shape(config.size)
        if arch != config.arch:
            raise LatentFMError(f"model.size={config.size!r} is a {arch} size; set model.arch={arch}")
        shape.update(named)
    common = dict(
        in_channels=in_channels,
        image_size=image_size,
        num_classes=num_classes,
        class_dropout=config.class_dropout,
        concat_channels=concat_channels,
        concat_encoder=concat_encoder,
        grad_checkpointing=config.grad_checkpointing,
        step_input=config.step_input,
    )
    return (DiT if config.arch == "dit" else UNet)(**common, **shape)
