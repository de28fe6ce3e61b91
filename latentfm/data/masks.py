"""Inpainting masks drawn per sample: 1 marks pixels to generate (white in a mask PNG), 0 pixels to keep.

Two families, as in LFM and LaMa: axis-aligned boxes and free-form strokes (thick random walks), each covering a
fraction of the image drawn uniformly from ``[min_fraction, max_fraction]``; with probability
``everything_probability`` a mask covers the whole image, so that the model also learns to generate from nothing.
Every draw comes from the caller's ``torch.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from latentfm.errors import LatentFMError

MASK_KINDS = ("box", "stroke")


@dataclass(frozen=True)
class MaskSettings:
    """How training masks are drawn (see the module docstring)."""

    kinds: tuple[str, ...] = MASK_KINDS
    min_fraction: float = 0.1
    max_fraction: float = 0.5
    everything_probability: float = 0.05

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kinds) - set(MASK_KINDS)) or ([] if self.kinds else ["(none)"])
        if unknown:
            raise LatentFMError(f"mask kind {unknown[0]!r} is unknown; use {', '.join(MASK_KINDS)}")
        if not 0.0 < self.min_fraction <= self.max_fraction <= 1.0:
            raise LatentFMError(f"mask fractions {self.min_fraction}, {self.max_fraction}: need 0 < min <= max <= 1")
        if not 0.0 <= self.everything_probability <= 1.0:
            raise LatentFMError(f"everything_probability={self.everything_probability} must lie in [0, 1]")


def _uniform(generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def box_mask(size: int, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """A ``size``² float mask with one rectangle of about ``fraction`` of the area set to 1.

    Example:
        >>> mask = box_mask(10, 0.25, torch.Generator().manual_seed(0))
        >>> mask.shape, 0.15 <= mask.mean().item() <= 0.36
        (torch.Size([10, 10]), True)
    """
    aspect = math.exp(_uniform(generator, -0.7, 0.7))
    height = min(size, max(1, round(size * math.sqrt(fraction * aspect))))
    width = min(size, max(1, round(size * size * fraction / height)))
    top = int(torch.randint(0, size - height + 1, (), generator=generator))
    left = int(torch.randint(0, size - width + 1, (), generator=generator))
    mask = torch.zeros(size, size)
    mask[top : top + height, left : left + width] = 1.0
    return mask


def stroke_mask(size: int, fraction: float, generator: torch.Generator, max_segments: int = 64) -> torch.Tensor:
    """A ``size``² float mask of thick random-walk strokes, drawn until at least ``fraction`` is covered (or
    ``max_segments`` segments are drawn).

    Example:
        >>> mask = stroke_mask(16, 0.3, torch.Generator().manual_seed(0))
        >>> mask.mean().item() >= 0.3, set(mask.unique().tolist()) == {0.0, 1.0}
        (True, True)
    """
    grid = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij"), -1).float() + 0.5
    mask = torch.zeros(size, size, dtype=torch.bool)
    point = torch.rand(2, generator=generator) * size
    for _ in range(max_segments):
        if mask.float().mean().item() >= fraction:
            break
        angle, length = _uniform(generator, 0, 2 * math.pi), _uniform(generator, 0.1, 0.4) * size
        radius = _uniform(generator, 0.04, 0.1) * size
        end = (point + length * torch.tensor([math.sin(angle), math.cos(angle)])).clamp(0, size)
        mask |= _segment_distance(grid, point, end) <= radius
        point = end
    return mask.float()


def _segment_distance(grid: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Distance of each grid point ``[H, W, 2]`` to the segment from ``start`` to ``end``."""
    direction = end - start
    along = ((grid - start) @ direction / direction.dot(direction).clamp_min(1e-12)).clamp(0, 1)
    return (grid - (start + along[..., None] * direction)).norm(dim=-1)


def draw_masks(n: int, size: int, settings: MaskSettings, generator: torch.Generator) -> torch.Tensor:
    """``n`` training masks ``[n, 1, size, size]`` (1: generate, 0: keep), drawn with ``generator``.

    Example:
        >>> masks = draw_masks(4, 8, MaskSettings(), torch.Generator().manual_seed(0))
        >>> masks.shape, bool(((masks == 0) | (masks == 1)).all())
        (torch.Size([4, 1, 8, 8]), True)
    """
    masks = []
    for _ in range(n):
        if _uniform(generator) < settings.everything_probability:
            masks.append(torch.ones(size, size))
            continue
        kind = settings.kinds[int(torch.randint(0, len(settings.kinds), (), generator=generator))]
        fraction = _uniform(generator, settings.min_fraction, settings.max_fraction)
        masks.append(box_mask(size, fraction, generator) if kind == "box" else stroke_mask(size, fraction, generator))
    return torch.stack(masks)[:, None]
