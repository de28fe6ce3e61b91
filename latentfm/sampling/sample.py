"""The one sampling entry point: integrate from the source at t=0 to data at t=1."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from latentfm.errors import LatentFMError
from latentfm.sampling.schedules import explicit_steps, time_grid
from latentfm.sampling.settings import ADAPTIVE_TOLERANCE, SamplerSettings
from latentfm.sampling.solvers import Noise, Refine, Velocity, integrate, rules_nfe, solver_rules


@dataclass
class SampleStats:
    """What a sampling run did: ``nfe`` is the exact number of velocity calls per sample, ``refiner_calls`` the
    number of velocity-refiner calls per sample (turbo programs)."""

    solver: str
    steps: int
    nfe: int
    times: list[float] = field(default_factory=list)
    note: str = ""
    refiner_calls: int = 0
    network_passes: int = 0  # model evaluations per sample, two per guided call (set by the caller that guides)
    refiner_passes: int = 0


class _Counting:
    """A velocity (or a refiner) that counts its calls (the exact NFE)."""

    def __init__(self, function: Callable):
        self.function, self.calls = function, 0

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        self.count()
        return self.function(*args)

    @torch.compiler.disable
    def count(self) -> None:
        """One more call; outside any compiled graph (traced, a changing count would recompile it every call)."""
        self.calls += 1


def _steps_for_budget(solver: str, nfe: int, skip_last: bool) -> tuple[int, str]:
    """The largest step count whose exact NFE fits ``nfe``, and a note when it spends less."""
    steps = 0
    while rules_nfe(solver_rules(solver, steps + 1, skip_last)) <= nfe:
        steps += 1
    if steps == 0:
        least = rules_nfe(solver_rules(solver, 1, skip_last))
        raise LatentFMError(f"solver {solver!r} needs at least {least} NFE; nfe={nfe} is too small")
    spent = rules_nfe(solver_rules(solver, steps, skip_last))
    return steps, "" if spent == nfe else f"nfe budget {nfe}: {steps} {solver} steps use {spent}"


def _fixed_step(counted: _Counting, x0: torch.Tensor, settings: SamplerSettings, noise: Noise | None):
    """A named fixed-step solver on its time grid."""
    skip_last = bool(settings.options.get("skip_last", False))
    steps, note = settings.steps or explicit_steps(settings.schedule), ""
    if settings.budget is not None:
        steps, note = _steps_for_budget(settings.solver, settings.budget, skip_last)
    times = time_grid(settings.schedule, steps).tolist()
    rules = solver_rules(settings.solver, steps, skip_last)
    x = integrate(counted, x0, times, rules, compiled=settings.compile, noise=noise, noise_strength=settings.noise)
    return x, SampleStats(settings.solver, steps, counted.calls, times, note)


def _turbo(counted: _Counting, x0: torch.Tensor, settings: SamplerSettings, refine: Refine | None):
    """A FlowTurbo program: Heun, pseudo-corrector and refiner steps on the schedule's grid."""
    rules = settings.rules
    times = time_grid(settings.schedule, len(rules)).tolist()
    refiner = None if refine is None else _Counting(refine)
    x = integrate(counted, x0, times, rules, refine=refiner, compiled=settings.compile)
    calls = 0 if refiner is None else refiner.calls
    return x, SampleStats(settings.turbo, len(rules), counted.calls, times, refiner_calls=calls)


def _searched(counted: _Counting, x0: torch.Tensor, settings: SamplerSettings):
    """A searched program: its own times and per-step rules."""
    program = settings.schedule
    if settings.steps is not None and settings.steps != len(program.rules):
        raise LatentFMError(f"the searched schedule has {len(program.rules)} steps, not steps={settings.steps}")
    if settings.nfe is not None and settings.nfe != program.nfe:
        raise LatentFMError(
            f"the searched schedule spends {program.nfe} NFE, not nfe={settings.nfe}; search one for that"
        )
    x = program.run(counted, x0)
    return x, SampleStats("searched", len(program.rules), counted.calls, list(program.times))


def _adaptive(counted: _Counting, x0: torch.Tensor, settings: SamplerSettings):
    """dopri5 from torchdiffeq over [0, 1] with the given tolerances."""
    from torchdiffeq import odeint

    rtol = settings.options.get("rtol", ADAPTIVE_TOLERANCE)
    atol = settings.options.get("atol", ADAPTIVE_TOLERANCE)

    def field(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return counted(x, t.to(torch.float32).expand(x.shape[0])).to(x.dtype)

    span = torch.tensor([0.0, 1.0], dtype=torch.float64, device=x0.device)
    x = odeint(field, x0, span, rtol=rtol, atol=atol, method="dopri5")[-1]
    return x, SampleStats(settings.solver, 0, counted.calls, [0.0, 1.0], f"dopri5 rtol={rtol} atol={atol}")


@torch.no_grad()
def sample(
    velocity: Velocity,
    x0: torch.Tensor,
    settings: SamplerSettings | None = None,
    refine: Refine | None = None,
    noise: Noise | None = None,
) -> tuple[torch.Tensor, SampleStats]:
    """Solve ``dx/dt = velocity(x, t)`` from ``x0`` at t=0 to t=1.

    Args:
        velocity: ``velocity(x, t) -> v`` with ``t`` a float tensor of shape ``[B]``.
        x0: the source sample (batch first); the state keeps its dtype.
        settings: the sampler (default ``SamplerSettings()``: midpoint at 8 NFE); its guidance fields belong to
            the caller's velocity.
        refine: ``refine(x, t, v) -> v'``, the velocity refiner of a turbo program's refiner steps.
        noise: ``noise(i)``, the fresh noise of the ``sde`` solver's step ``i`` (default: torch's generator).

    Returns:
        ``(x1, stats)`` with ``stats.nfe`` the exact number of velocity calls per sample.

    Example:
        >>> euler4 = SamplerSettings(solver="euler", nfe=4)
        >>> x1, stats = sample(lambda x, t: torch.ones_like(x), torch.zeros(2, 3), euler4)
        >>> x1[0].tolist(), stats.nfe
        ([1.0, 1.0, 1.0], 4)
    """
    settings = settings or SamplerSettings()
    counted = _Counting(velocity)
    if settings.searched:
        return _searched(counted, x0, settings)
    if settings.adaptive:
        return _adaptive(counted, x0, settings)
    if settings.turbo is not None:
        return _turbo(counted, x0, settings, refine)
    return _fixed_step(counted, x0, settings, noise)
