"""Probability paths ``x_t = alpha_t * x1 + sigma_t * x0`` from source x0 (t=0) to data x1 (t=1)."""

from __future__ import annotations

import math

import torch

from latentfm.errors import LatentFMError


def _expand(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` of shape [B] reshaped to broadcast against ``like`` of shape [B, ...]."""
    return t.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


class AffinePath:
    """A path given by ``alpha_t``, ``sigma_t`` and their time derivatives.

    ``sample(x0, x1, t)`` returns the point ``x_t`` and the conditional target velocity
    ``u_t = d x_t / dt = alpha'_t * x1 + sigma'_t * x0``.
    """

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """Coefficient of the data x1 at time t."""
        raise NotImplementedError

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Coefficient of the source x0 at time t."""
        raise NotImplementedError

    def d_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """Time derivative of ``alpha``."""
        raise NotImplementedError

    def d_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Time derivative of ``sigma``."""
        raise NotImplementedError

    def sample(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The point on the path and its target velocity: ``(x_t, u_t)``."""
        a, s = _expand(self.alpha(t), x1), _expand(self.sigma(t), x1)
        da, ds = _expand(self.d_alpha(t), x1), _expand(self.d_sigma(t), x1)
        return a * x1 + s * x0, da * x1 + ds * x0


class LinearPath(AffinePath):
    """Rectified flow / CondOT: ``x_t = t*x1 + (1 - (1 - sigma_min) t) x0``, target ``x1 - (1 - sigma_min) x0``.

    Example:
        >>> path = LinearPath()
        >>> x_t, u_t = path.sample(torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([0.25]))
        >>> x_t.tolist(), u_t.tolist()
        ([[0.25, 0.25]], [[1.0, 1.0]])
    """

    def __init__(self, sigma_min: float = 0.0):
        if not 0.0 <= sigma_min < 1.0:
            raise LatentFMError(f"flow.sigma_min={sigma_min} must be in [0, 1)")
        self.sigma_min = sigma_min

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 - (1.0 - self.sigma_min) * t

    def d_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(t)

    def d_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(t, -(1.0 - self.sigma_min))


class CosinePath(AffinePath):
    """The variance-preserving cosine path (GVP in SiT): ``alpha_t = sin(pi t / 2)``, ``sigma_t = cos(pi t / 2)``."""

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sin(0.5 * math.pi * t)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.cos(0.5 * math.pi * t)

    def d_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * math.pi * torch.cos(0.5 * math.pi * t)

    def d_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)


def cosine_alpha_bar(step: int, steps: int = 1000, offset: float = 0.008) -> float:
    """ᾱ of the forward-diffusion step ``step`` of ``steps`` on the cosine schedule (Nichol & Dhariwal 2021).

    The one place this schedule is written. Diffusion counts steps from the data, flow time from the source:
    with ``offset=0`` it is ``CosinePath``'s ``alpha_t ** 2`` at ``t = 1 - step / steps``. The upsample task's
    ``noise: diffusion`` source is ``sqrt(ᾱ) up + sqrt(1 - ᾱ) eps`` at its ``diffusion_step``.

    Example:
        >>> round(cosine_alpha_bar(400), 4), cosine_alpha_bar(0)
        (0.6475, 1.0)
        >>> abs(cosine_alpha_bar(400, offset=0.0) - CosinePath().alpha(torch.tensor(0.6)).item() ** 2) < 1e-6
        True
    """

    def f(s: int) -> float:
        return math.cos((s / steps + offset) / (1 + offset) * math.pi / 2) ** 2

    return f(step) / f(0)


def build_path(name: str, sigma_min: float = 0.0) -> AffinePath:
    """The path called ``name``: ``"linear"`` or ``"cosine"``."""
    if name == "linear":
        return LinearPath(sigma_min)
    if name == "cosine":
        if sigma_min:
            raise LatentFMError("flow.sigma_min applies to the linear path only; set it to 0 for flow.path=cosine")
        return CosinePath()
    raise LatentFMError(f"flow.path={name!r} is unknown; use 'linear' or 'cosine'")
