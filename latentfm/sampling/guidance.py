"""Turning a conditional model into a ``velocity(x, t)`` callable, with classifier-free guidance."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from latentfm.condition import Condition


@torch.compiler.disable
def count_passes(counter: GuidedVelocity | GuidedRefiner, passes: int) -> None:
    """Add ``passes`` to ``counter.network_passes`` and advance its progress bar by one call, outside any compiled
    graph (a traced count would recompile the graph at every call)."""
    counter.network_passes += passes
    if getattr(counter, "progress", None) is not None:
        counter.progress.update(1)


class GuidedVelocity:
    """``v = v_uncond + w (v_cond - v_uncond)`` on all channels, in one batched model call.

    Args:
        model: a backbone ``model(x, t, cond) -> v``.
        cond: the condition of the batch being sampled (labels and/or concat channels), or None.
        cfg_scale: the guidance weight ``w``; 1 means plain conditional sampling (one pass).
        uncond: the condition of the unguided half (the task says which parts guidance drops: the null
            label, an empty map; an inpainting condition stays). None: nothing to guide, one pass.
        interval: optional ``(t_low, t_high)``; guidance applies only for t inside it, elsewhere the
            conditional velocity is used alone (one pass).

    ``network_passes`` counts model evaluations per sample: a guided call counts 2, a plain one 1. ``progress``
    (a tqdm bar, or None) advances by one at every call, so a sampling bar moves with the solver's steps.
    """

    def __init__(
        self,
        model: nn.Module,
        cond: Condition | None = None,
        cfg_scale: float = 1.0,
        uncond: Condition | None = None,
        interval: tuple[float, float] | None = None,
    ):
        self.model, self.cond, self.cfg_scale = model, cond or Condition(), cfg_scale
        self.uncond, self.interval = uncond, interval
        self.network_passes, self.progress = 0, None

    def guided_at(self, t: torch.Tensor) -> bool:
        """Whether a call at time ``t`` runs the guided (two-pass) form."""
        if self.cfg_scale == 1.0 or self.uncond is None:
            return False
        if self.interval is None:
            return True
        low, high = self.interval
        return low <= float(t[0].detach()) <= high  # the schedule search learns t: no gradient here

    def __call__(self, x: torch.Tensor, t: torch.Tensor, step: torch.Tensor | None = None) -> torch.Tensor:
        """The (guided) velocity at ``x``, ``t``; ``step`` ``[B]``: the jump of a few-step model's call."""
        cond, uncond = self.cond, self.uncond
        if step is not None:  # a few-step model's call: both halves are told the jump
            cond, uncond = cond.with_step(step), uncond and uncond.with_step(step)
        if not self.guided_at(t):
            count_passes(self, 1)
            return self.model(x, t, cond)
        count_passes(self, 2)
        both = cond.cat(uncond)
        v_cond, v_uncond = self.model(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
        return v_uncond + self.cfg_scale * (v_cond - v_uncond)


class GuidedRefiner:
    """A velocity refiner guided like the velocity it refines (FlowTurbo): ``refine(x, t, v) = v + Δ`` with
    ``Δ = Δ_uncond + w (Δ_cond - Δ_uncond)`` from one batched call where ``velocity`` guides, ``Δ_cond`` elsewhere.

    ``refiner(x, t, v, cond) -> Δ``; ``velocity`` is the GuidedVelocity of the batch (its condition, weight and
    interval). ``network_passes`` counts refiner evaluations per sample.
    """

    def __init__(self, refiner: Callable, velocity: GuidedVelocity):
        self.refiner, self.velocity, self.network_passes = refiner, velocity, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        guide = self.velocity
        if not guide.guided_at(t):
            count_passes(self, 1)
            return v + self.refiner(x, t, v, guide.cond)
        count_passes(self, 2)
        both = guide.cond.cat(guide.uncond)
        delta_cond, delta_uncond = self.refiner(torch.cat([x, x]), torch.cat([t, t]), torch.cat([v, v]), both).chunk(2)
        return v + delta_uncond + guide.cfg_scale * (delta_cond - delta_uncond)
