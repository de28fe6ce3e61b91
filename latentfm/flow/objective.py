"""The training objective in one call: draw the source and times, pair them with the data, and return the
point on the path with its target velocity (as torchcfm's ``sample_location_and_conditional_flow``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from latentfm.flow.couplings import Coupling, independent_coupling
from latentfm.flow.paths import AffinePath, LinearPath
from latentfm.flow.time_samplers import TimeSampler, uniform_sampler


@dataclass
class FlowSample:
    """One training batch on the path: ``x_t`` at times ``t`` with target velocity ``u_t``, from source ``x0``
    paired with data ``x1``."""

    x_t: torch.Tensor
    t: torch.Tensor
    u_t: torch.Tensor
    x0: torch.Tensor
    x1: torch.Tensor


@dataclass
class FlowObjective:
    """``objective(x1, generator) -> FlowSample``: coupling × path × t-sampler.

    The source and the times are drawn for the whole global batch from ``generator`` (the step's), then the
    coupling pairs them with the data and ``part`` keeps this rank's rows; so a step's noise depends only on
    (seed, step), whatever the number of ranks.

    Example:
        >>> objective = FlowObjective()
        >>> x1 = torch.ones(4, 1, 2, 2)
        >>> s = objective(x1, torch.Generator().manual_seed(0))
        >>> torch.allclose(s.x_t, (1 - s.t[:, None, None, None]) * s.x0 + s.t[:, None, None, None] * x1)
        True
        >>> torch.equal(s.u_t, x1 - s.x0)
        True
    """

    coupling: Coupling = independent_coupling
    path: AffinePath = LinearPath()
    t_sampler: TimeSampler = uniform_sampler()

    def __call__(
        self,
        x1: torch.Tensor,
        generator: torch.Generator,
        labels: torch.Tensor | None = None,
        global_size: int | None = None,
        part: slice = slice(None),
        source: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> FlowSample:
        """This rank's ``FlowSample`` for its data ``x1`` (and ``labels``), a ``part`` of a global batch of
        ``global_size`` rows (default: ``len(x1)``, a single process). ``source`` turns this rank's paired
        Gaussian rows into the flow's source (a task's, e.g. a noised low-resolution latent)."""
        size = global_size or len(x1)
        x0_all = torch.randn((size, *x1.shape[1:]), generator=generator, device=x1.device)
        t = self.t_sampler(size, generator, x1.device)[part]
        x0 = self.coupling(x0_all, x1, labels, part)
        if source is not None:
            x0 = source(x0)
        x_t, u_t = self.path.sample(x0, x1, t)
        return FlowSample(x_t=x_t, t=t, u_t=u_t, x0=x0, x1=x1)
