"""Embeddings shared by the backbones: flow time, class labels and fixed 2D sin-cos positions."""

from __future__ import annotations

import math

import torch
from torch import nn

TIME_SCALE = 1000.0
"""Flow time t in [0, 1] is multiplied by this before the sinusoidal embedding (DiT's timestep range)."""


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Sin-cos features ``[N, dim]`` of 1D ``positions`` ``[N]``: first ``dim/2`` sines, then cosines."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.to(torch.float64)[:, None] * omega[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d_pos_embed(dim: int, grid_size: int) -> torch.Tensor:
    """Fixed positional embedding ``[grid_size**2, dim]`` (float32) of a square grid, row-major tokens.

    The first half of the channels encodes the column, the second half the row, as in DiT/MAE.
    """
    rows, cols = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=1)
    return emb.float()


class TimestepEmbedder(nn.Module):
    """Embed flow time ``t`` ``[B]`` in [0, 1] into a ``hidden_size`` vector.

    ``t`` is multiplied by ``time_scale`` (default 1000, like DiT's integer timesteps), turned into
    ``frequency_size`` sinusoidal features (cosines, then sines) and passed through a two-layer SiLU MLP.
    """

    def __init__(self, hidden_size: int, frequency_size: int = 256, time_scale: float = TIME_SCALE) -> None:
        super().__init__()
        self.frequency_size = frequency_size
        self.time_scale = time_scale
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def sinusoidal(self, t: torch.Tensor, max_period: float = 10000.0) -> torch.Tensor:
        """Sinusoidal features ``[B, frequency_size]`` of the scaled time (float32)."""
        half = self.frequency_size // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
        args = (t.float() * self.time_scale)[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embedding ``[B, hidden_size]`` of ``t`` ``[B]``."""
        weight = self.mlp[0].weight
        return self.mlp(self.sinusoidal(t).to(weight.dtype))


class StepEmbedder(TimestepEmbedder):
    """Embed the jump ``step`` ``[B]`` of a few-step model's call (``Condition.step``; None: 0, the velocity at
    ``t``) like a time. Its output layer starts at zero, so a trained flow model given this input is unchanged
    until the few-step tuning teaches it the steps.

    Example:
        >>> embedder = StepEmbedder(8)
        >>> embedder(None, torch.rand(2)).abs().max().item(), tuple(embedder(torch.rand(2), torch.rand(2)).shape)
        (0.0, (2, 8))
    """

    def __init__(self, hidden_size: int, frequency_size: int = 256) -> None:
        super().__init__(hidden_size, frequency_size)
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, step: torch.Tensor | None, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Embedding ``[B, hidden_size]`` of ``step`` (zeros like the times ``t`` when None)."""
        return super().forward(torch.zeros_like(t) if step is None else step.to(t.dtype))


class LabelEmbedder(nn.Module):
    """Embed class labels ``[B]``; row ``num_classes`` is the null label used for guidance.

    In training mode each label is replaced by the null label with probability ``dropout`` (drawn from
    torch's default generator, so a seeded run is reproducible).
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout: float) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dropout = dropout
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def drop_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """``labels`` with each entry set to the null label with probability ``dropout``."""
        drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout
        return torch.where(drop, torch.full_like(labels, self.num_classes), labels)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """Embedding ``[B, hidden_size]`` of ``labels``, with label dropout in training mode."""
        if self.training and self.dropout > 0:
            labels = self.drop_labels(labels)
        return self.embedding_table(labels)
