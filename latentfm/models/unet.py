"""UNet: the ADM convolutional velocity model (Dhariwal & Nichol, 2021), as used by LFM for latents.

Residual blocks whose second normalisation is scaled and shifted by the time and class embedding, SDPA
self-attention at chosen feature-map sizes, strided-convolution or residual down/up-sampling, and skip
connections from every encoder stage to the decoder. The layer shapes follow openai/guided-diffusion's
``UNetModel`` (``use_scale_shift_norm=True``), so its published sizes have their published parameter
counts; module names are this file's own. Time follows the library convention (t=0 noise, t=1 data).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from latentfm.condition import Condition
from latentfm.errors import LatentFMError
from latentfm.models.conditioning import check_velocity_inputs, concat_input, label_embedding
from latentfm.models.embeddings import LabelEmbedder, StepEmbedder, TimestepEmbedder


def zero_module(module: nn.Module) -> nn.Module:
    """``module`` with every parameter set to zero (its output starts at exactly zero)."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class ResBlock(nn.Module):
    """``skip(x) + conv(drop(silu(norm(conv(silu(norm(x)))) * (1 + scale) + shift)))``.

    ``scale`` and ``shift`` come from the embedding; the last convolution starts at zero, so a new block is
    the identity. ``resample`` ``"down"`` (average pooling) or ``"up"`` (nearest) changes the resolution
    inside the block, as ADM's ``resblock_updown``.
    """

    def __init__(
        self, channels: int, emb_channels: int, out_channels: int, dropout: float, groups: int, resample: str = ""
    ) -> None:
        super().__init__()
        self.resample = resample
        self.in_norm = nn.GroupNorm(groups, channels)
        self.in_conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_channels, 2 * out_channels)
        self.out_norm = nn.GroupNorm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)

    def _resampled(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The block applied to ``x`` ``[B, C, H, W]`` under the embedding ``emb`` ``[B, E]``."""
        h = self.in_conv(self._resampled(F.silu(self.in_norm(x))))
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.out_norm(h) * (1 + scale) + shift
        return self.skip(self._resampled(x)) + self.out_conv(self.dropout(F.silu(h)))


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map (SDPA), added to its input."""

    def __init__(self, channels: int, num_heads: int, groups: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` plus attention over its ``H*W`` positions (``emb`` is unused)."""
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x).reshape(b, c, h * w))
        q, k, v = qkv.reshape(b, 3, self.num_heads, c // self.num_heads, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h * w)).reshape(b, c, h, w)


class Downsample(nn.Module):
    """A 3×3 convolution with stride 2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` at half the resolution (``emb`` is unused)."""
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour doubling followed by a 3×3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` at twice the resolution (``emb`` is unused)."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class EmbeddingSequential(nn.Sequential):
    """Layers applied in order, each given the feature map and the embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``x`` passed through every layer under ``emb``."""
        for layer in self:
            x = layer(x, emb)
        return x


def attention_heads(width: int, head_channels: int) -> int:
    """Heads of ``head_channels`` channels in a feature map of ``width`` channels (at least one)."""
    return max(1, width // head_channels)


def _check_config(
    image_size: int, channel_mult: tuple[int, ...], widths: list[int], groups: int, head_channels: int
) -> None:
    """Raise LatentFMError for a UNet shape that cannot work."""
    factor = 2 ** (len(channel_mult) - 1)
    if not channel_mult or image_size % factor != 0:
        raise LatentFMError(
            f"UNet: image_size {image_size} must be divisible by 2**(len(channel_mult)-1) = {factor}; "
            f"use fewer channel_mult levels (got {list(channel_mult)})"
        )
    for width in widths:
        if width % groups != 0:
            raise LatentFMError(f"UNet: width {width} is not divisible by norm_groups {groups}; change model_channels")
        heads = attention_heads(width, head_channels)
        if width % heads != 0:
            raise LatentFMError(f"UNet: width {width} is not divisible into {heads} attention heads")


class UNet(nn.Module):
    """ADM UNet predicting the velocity ``v = model(x, t, cond)``.

    ``x`` is ``[B, in_channels, image_size, image_size]``, ``t`` is ``[B]`` in [0, 1], ``cond`` optionally
    holds class ``labels`` ``[B]`` (null label ``num_classes``) and ``concat`` channels ``[B,
    concat_channels, H, W]``. Stage ``i`` has ``model_channels * channel_mult[i]`` channels and
    ``num_res_blocks`` residual blocks; self-attention runs where the feature map is one of
    ``attention_resolutions`` pixels wide (and always in the middle), with heads of ``num_head_channels``.
    The concat channels enter through their own zero-initialised convolution and the output layer starts at
    zero, so the model outputs exactly zero at init and a trained model gains a condition unchanged. A
    ``concat_encoder`` (a semantic map rescaler) turns ``cond.concat`` into those channels first.

    >>> model = UNet(in_channels=1, image_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
    ...              attention_resolutions=(4,), num_classes=10)
    >>> v = model(torch.randn(2, 1, 8, 8), torch.rand(2), Condition(labels=torch.tensor([3, 10])))
    >>> tuple(v.shape), bool(v.abs().max() == 0)
    ((2, 1, 8, 8), True)
    """

    def __init__(
        self,
        *,
        in_channels: int,
        image_size: int,
        model_channels: int = 64,
        channel_mult: tuple[int, ...] | list[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: tuple[int, ...] | list[int] = (16,),
        num_head_channels: int = 64,
        dropout: float = 0.0,
        num_classes: int = 0,
        class_dropout: float = 0.1,
        concat_channels: int = 0,
        concat_encoder: nn.Module | None = None,
        learn_sigma: bool = False,
        resblock_updown: bool = False,
        norm_groups: int = 32,
        grad_checkpointing: bool = False,
        channels_last: bool = False,
        step_input: bool = False,
    ) -> None:
        super().__init__()
        channel_mult = tuple(channel_mult)
        widths = [model_channels * mult for mult in channel_mult]
        _check_config(image_size, channel_mult, widths, norm_groups, num_head_channels)
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.image_size = image_size
        self.num_classes = num_classes
        self.concat_channels = concat_channels
        self.concat_encoder = concat_encoder
        self.grad_checkpointing = grad_checkpointing
        self.channels_last = channels_last
        emb = 4 * model_channels
        self.t_embedder = TimestepEmbedder(emb, frequency_size=model_channels)
        self.step_embedder = StepEmbedder(emb, frequency_size=model_channels) if step_input else None
        # The label table keeps nn.Embedding's N(0, 1) start, as ADM's does: a class signal as strong as the time
        # embedding from step 0. DiT's N(0, 0.02²) start cost this UNet 0.25 FD and 8 points of class accuracy on
        # Fashion-MNIST (BENCHMARKS.md, finding 2).
        self.y_embedder = LabelEmbedder(num_classes, emb, class_dropout) if num_classes else None

        def res(cin: int, cout: int, resample: str = "") -> ResBlock:
            return ResBlock(cin, emb, cout, dropout, norm_groups, resample)

        def attention(width: int) -> SelfAttention:
            return SelfAttention(width, attention_heads(width, num_head_channels), norm_groups)

        width = widths[0]
        self.input_conv = nn.Conv2d(in_channels, width, 3, padding=1)
        self.concat_conv = zero_module(nn.Conv2d(concat_channels, width, 3, padding=1)) if concat_channels else None
        self.down = nn.ModuleList()
        skip_widths, resolution = [width], image_size
        for level, level_width in enumerate(widths):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(width, level_width)]
                width = level_width
                if resolution in attention_resolutions:
                    layers.append(attention(width))
                self.down.append(EmbeddingSequential(*layers))
                skip_widths.append(width)
            if level < len(widths) - 1:
                downsample = res(width, width, "down") if resblock_updown else Downsample(width)
                self.down.append(EmbeddingSequential(downsample))
                skip_widths.append(width)
                resolution //= 2
        self.middle = EmbeddingSequential(res(width, width), attention(width), res(width, width))
        self.up = nn.ModuleList()
        for level, level_width in reversed(list(enumerate(widths))):
            for block in range(num_res_blocks + 1):
                layers = [res(width + skip_widths.pop(), level_width)]
                width = level_width
                if resolution in attention_resolutions:
                    layers.append(attention(width))
                if level > 0 and block == num_res_blocks:
                    layers.append(res(width, width, "up") if resblock_updown else Upsample(width))
                    resolution *= 2
                self.up.append(EmbeddingSequential(*layers))
        self.out_norm = nn.GroupNorm(norm_groups, width)
        self.out_conv = zero_module(nn.Conv2d(width, self.out_channels, 3, padding=1))
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Condition | None = None) -> torch.Tensor:
        """Velocity ``[B, in_channels, H, W]`` at state ``x`` and time ``t`` given ``cond``."""
        cond = cond if cond is not None else Condition()
        check_velocity_inputs("UNet", x, t, (self.in_channels, self.image_size, self.image_size))
        concat = concat_input("UNet", cond, self.concat_channels, x, self.concat_encoder)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        h = self.input_conv(x)
        if concat is not None:
            h = h + self.concat_conv(concat)
        emb = self.t_embedder(t) + label_embedding("UNet", self.y_embedder, cond.labels, x)
        if self.step_embedder is not None:
            emb = emb + self.step_embedder(cond.step, t)
        skips = [h]
        for block in self.down:
            h = self._run(block, h, emb)
            skips.append(h)
        h = self._run(self.middle, h, emb)
        for block in self.up:
            h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb)
        out = self.out_conv(F.silu(self.out_norm(h)))
        return out[:, : self.in_channels].contiguous()

    def _run(self, block: EmbeddingSequential, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Apply ``block``, recomputing its activations in the backward pass when checkpointing."""
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, h, emb, use_reentrant=False)
        return block(h, emb)
