"""What a velocity says about the linear path ``x_t = t x1 + (1 - t) ε`` (t = 0 noise, t = 1 data): the
denoised estimate, the noise estimate and the score, and back. ``t`` is a number or a ``[B]`` tensor; these
divide by ``1 - t`` or ``t`` where the conversion needs it, so keep ``t`` inside (0, 1) there.

Example:
    >>> x1, noise, t = torch.tensor([[2.0]]), torch.tensor([[-1.0]]), torch.tensor([0.25])
    >>> x, v = t[:, None] * x1 + (1 - t[:, None]) * noise, x1 - noise  # a point of the path and its velocity
    >>> denoised_from_velocity(x, t, v).item(), noise_from_velocity(x, t, v).item()
    (2.0, -1.0)
    >>> score = score_from_velocity(x, t, v)
    >>> round(score.item(), 4), velocity_from_score(x, t, score).item()  # -noise / (1 - t)
    (1.3333, 3.0)
    >>> velocity_from_denoised(x, t, x1).item(), velocity_from_noise(x, t, noise).item()
    (3.0, 3.0)
"""

from __future__ import annotations

import torch

Time = float | torch.Tensor


def _column(t: Time, x: torch.Tensor) -> Time:
    """``t`` shaped to broadcast over ``x`` ``[B, ...]`` (a ``[B]`` tensor gains trailing axes)."""
    if isinstance(t, torch.Tensor) and t.ndim == 1:
        return t.view(-1, *[1] * (x.ndim - 1)).to(x.dtype)
    return t


def denoised_from_velocity(x: torch.Tensor, t: Time, v: torch.Tensor) -> torch.Tensor:
    """The data estimate ``x̂ = x + (1 - t) v``: one Euler step to t = 1."""
    return x + (1 - _column(t, x)) * v


def noise_from_velocity(x: torch.Tensor, t: Time, v: torch.Tensor) -> torch.Tensor:
    """The noise estimate ``ε̂ = x - t v``: one Euler step back to t = 0."""
    return x - _column(t, x) * v


def score_from_velocity(x: torch.Tensor, t: Time, v: torch.Tensor) -> torch.Tensor:
    """The score ``∇ log p_t(x) = (t v - x) / (1 - t)`` (``-ε̂ / (1 - t)``); t < 1."""
    t = _column(t, x)
    return (t * v - x) / (1 - t)


def velocity_from_denoised(x: torch.Tensor, t: Time, denoised: torch.Tensor) -> torch.Tensor:
    """The velocity of a data estimate: ``(x̂ - x) / (1 - t)``; t < 1."""
    return (denoised - x) / (1 - _column(t, x))


def velocity_from_noise(x: torch.Tensor, t: Time, noise: torch.Tensor) -> torch.Tensor:
    """The velocity of a noise estimate: ``(x - ε̂) / t``; t > 0."""
    return (x - noise) / _column(t, x)


def velocity_from_score(x: torch.Tensor, t: Time, score: torch.Tensor) -> torch.Tensor:
    """The velocity of a score: ``(x + (1 - t) s) / t``; t > 0."""
    t = _column(t, x)
    return (x + (1 - t) * score) / t
