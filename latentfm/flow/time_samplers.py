"""Training-time distributions over t in [0, 1] (t=0 source, t=1 data)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from latentfm.errors import LatentFMError

TimeSampler = Callable[[int, torch.Generator | None, torch.device], torch.Tensor]


def uniform_sampler() -> TimeSampler:
    """t ~ U(0, 1)."""

    def draw(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        return torch.rand(n, generator=generator, device=device)

    return draw


def logit_normal_sampler(loc: float = 0.0, scale: float = 1.0) -> TimeSampler:
    """t = sigmoid(loc + scale * n), n ~ N(0, 1) (SD3). A positive ``loc`` moves mass towards the data end."""
    if scale <= 0:
        raise LatentFMError(f"flow.t_scale={scale} must be positive")

    def draw(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        normal = torch.randn(n, generator=generator, device=device)
        return torch.sigmoid(loc + scale * normal)

    return draw


def mode_sampler(scale: float = 1.29) -> TimeSampler:
    """SD3's mode sampling with heavy tails, mirrored into this library's time direction.

    SD3 draws a noise level ``f(u) = 1 - u - s (cos^2(pi u / 2) - 1 + u)``; data time is ``1 - f(u)``.
    ``s`` must lie in [-1, 2/(pi-2)] for f to stay monotone.
    """
    if not -1.0 <= scale <= 2.0 / (math.pi - 2.0):
        raise LatentFMError(f"flow.t_scale={scale} must lie in [-1, {2 / (math.pi - 2):.4f}] for mode sampling")

    def draw(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        u = torch.rand(n, generator=generator, device=device)
        noise_level = 1.0 - u - scale * (torch.cos(0.5 * math.pi * u) ** 2 - 1.0 + u)
        return (1.0 - noise_level).clamp(0.0, 1.0)

    return draw


def build_time_sampler(name: str, loc: float = 0.0, scale: float = 1.0) -> TimeSampler:
    """The sampler called ``name``: ``"uniform"``, ``"logit_normal"`` (loc, scale) or ``"mode"`` (scale)."""
    if name == "uniform":
        return uniform_sampler()
    if name == "logit_normal":
        return logit_normal_sampler(loc, scale)
    if name == "mode":
        return mode_sampler(scale)
    raise LatentFMError(f"flow.t_sampler={name!r} is unknown; use 'uniform', 'logit_normal' or 'mode'")
