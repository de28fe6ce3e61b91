"""An analytic flow: the exact velocity of the linear path from N(0, I) to an isotropic Gaussian mixture.

With ``x_t = t x1 + (1 - t) x0``, ``x0 ~ N(0, I)`` and ``x1`` from component ``k`` (weight ``pi_k``, mean
``mu_k``, scale ``s_k``), ``x_t | k ~ N(t mu_k, v_k I)`` with ``v_k = t^2 s_k^2 + (1 - t)^2``, and

    E[x1 - x0 | x_t = x, k] = mu_k + (t s_k^2 - (1 - t)) / v_k * (x - t mu_k).

The marginal velocity is the posterior-weighted sum over components, ``w_k ∝ pi_k N(x; t mu_k, v_k I)``.
It is the exact field for benchmarking solvers: no training error, any dimension.
"""

from __future__ import annotations

import math

import torch


class GaussianMixtureFlow:
    """The linear-path velocity field from a standard normal to ``sum_k pi_k N(mu_k, s_k^2 I)``."""

    def __init__(self, means: torch.Tensor, scales: torch.Tensor, weights: torch.Tensor | None = None):
        self.means, self.scales = means.double(), scales.double()
        weights = torch.full_like(self.scales, 1.0 / len(self.scales)) if weights is None else weights.double()
        self.log_weights = torch.log(weights / weights.sum())

    @classmethod
    def random(cls, dim: int, components: int, scale_range: tuple[float, float], seed: int = 0) -> GaussianMixtureFlow:
        """Means drawn from N(0, I), scales evenly spaced over ``scale_range``, equal weights."""
        generator = torch.Generator().manual_seed(seed)
        means = torch.randn(components, dim, generator=generator, dtype=torch.float64)
        return cls(means, torch.linspace(*scale_range, components, dtype=torch.float64))

    def to(self, device: torch.device | str) -> GaussianMixtureFlow:
        """The same mixture with its parameters on ``device``."""
        moved = GaussianMixtureFlow.__new__(GaussianMixtureFlow)
        moved.means, moved.scales = self.means.to(device), self.scales.to(device)
        moved.log_weights = self.log_weights.to(device)
        return moved

    def _log_joint(self, x: torch.Tensor, t: torch.Tensor):
        """Per component: ``t`` [B, 1], variance ``v`` [B, K], offsets ``x - t mu`` [B, K, D] and the log of
        ``pi_k N(x; t mu_k, v_k I)`` [B, K], all in float64."""
        t = t.double().reshape(-1, 1)
        var = t**2 * self.scales**2 + (1 - t) ** 2
        offsets = x.double().unsqueeze(1) - t.unsqueeze(-1) * self.means
        log_normal = -0.5 * (offsets.square().sum(-1) / var + x.shape[-1] * torch.log(2 * math.pi * var))
        return t, var, offsets, self.log_weights + log_normal

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The exact velocity at states ``x`` [B, D] and times ``t`` [B], in the dtype of ``x``."""
        t_col, var, offsets, log_joint = self._log_joint(x, t)
        gain = (t_col * self.scales**2 - (1 - t_col)) / var
        per_component = self.means + gain.unsqueeze(-1) * offsets
        return (torch.softmax(log_joint, dim=1).unsqueeze(-1) * per_component).sum(1).to(x.dtype)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Alias of ``velocity`` so the flow is a ``velocity(x, t)`` callable."""
        return self.velocity(x, t)

    def log_density(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The log density of ``x_t`` at ``x`` [B, D] (the ``p_t`` of the continuity equation)."""
        return torch.logsumexp(self._log_joint(x, t)[3], dim=1)

    def sample_data(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` samples of the mixture (the distribution at t=1)."""
        generator = torch.Generator().manual_seed(seed)
        k = torch.multinomial(self.log_weights.exp().cpu(), n, replacement=True, generator=generator)
        noise = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        return self.means.cpu()[k] + self.scales.cpu()[k, None] * noise
