"""The one sampling entry point: integrate from the source at t=0 to data at t=1."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from latentfm.errors import LatentFMError
from latentfm.sampling.schedules import Schedule, explicit_steps, time_grid
from latentfm.sampling.solvers import SOLVERS, Velocity


@dataclass
class SampleStats:
    """What a sampling run did: ``nfe`` is the exact number of velocity calls per sample."""

    solver: str
    steps: int
    nfe: int
    times: list[float] = field(default_factory=list)
    note: str = ""


class _CountingVelocity:
    def __init__(self, velocity: Velocity):
        self.velocity, self.calls = velocity, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.velocity(x, t)


def _resolve_steps(solver: str, steps: int | None, nfe: int | None, schedule: Schedule) -> tuple[int, str]:
    """The step count from exactly one of ``steps``, an ``nfe`` budget or an explicit schedule."""
    calls = SOLVERS[solver].calls_per_step
    fixed = explicit_steps(schedule)
    if steps is None and nfe is None:
        if fixed is None:
            raise LatentFMError("give either steps or an nfe budget (or an explicit schedule)")
        return fixed, ""
    if steps is not None and nfe is not None:
        raise LatentFMError("give either steps or an nfe budget, not both")
    if steps is not None:
        if steps < 1:
            raise LatentFMError(f"steps={steps} must be at least 1")
        return steps, ""
    if nfe < calls:
        raise LatentFMError(f"solver {solver!r} needs at least {calls} NFE per step; nfe={nfe} is too small")
    chosen = nfe // calls
    note = "" if chosen * calls == nfe else f"nfe budget {nfe}: {chosen} {solver} steps use {chosen * calls}"
    return chosen, note


@torch.no_grad()
def sample(
    velocity: Velocity,
    x0: torch.Tensor,
    solver: str = "heun",
    steps: int | None = None,
    nfe: int | None = None,
    schedule: Schedule = "uniform",
    progress: bool = False,
) -> tuple[torch.Tensor, SampleStats]:
    """Solve ``dx/dt = velocity(x, t)`` from ``x0`` at t=0 to t=1.

    Args:
        velocity: ``velocity(x, t) -> v`` with ``t`` a float tensor of shape ``[B]``.
        x0: the source sample (batch first); the state keeps its dtype.
        solver: one of ``SOLVERS`` (``"euler"``, ``"heun"``).
        steps: number of solver steps, or
        nfe: a budget of velocity calls per sample; the largest step count that fits is used.
        schedule: ``"uniform"`` or an explicit increasing list of times from 0 to 1.
        progress: show a progress bar over steps.

    Returns:
        ``(x1, stats)`` with ``stats.nfe`` the exact number of velocity calls per sample.

    Example:
        >>> x1, stats = sample(lambda x, t: torch.ones_like(x), torch.zeros(2, 3), solver="euler", nfe=4)
        >>> x1[0].tolist(), stats.nfe
        ([1.0, 1.0, 1.0], 4)
    """
    if solver not in SOLVERS:
        raise LatentFMError(f"solver={solver!r} is unknown; use one of {sorted(SOLVERS)}")
    n_steps, note = _resolve_steps(solver, steps, nfe, schedule)
    times = time_grid(schedule, n_steps).tolist()
    counted = _CountingVelocity(velocity)
    x = x0
    for t, t_next in tqdm(list(zip(times[:-1], times[1:])), desc=f"sampling ({solver})", disable=not progress):
        x = SOLVERS[solver].step(counted, x, t, t_next)
    return x, SampleStats(solver=solver, steps=n_steps, nfe=counted.calls, times=times, note=note)
