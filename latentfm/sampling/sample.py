"""The one sampling entry point: integrate from the source at t=0 to data at t=1."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from latentfm.errors import LatentFMError
from latentfm.sampling.program import SearchedSchedule
from latentfm.sampling.schedules import Schedule, explicit_steps, time_grid
from latentfm.sampling.solvers import FIXED_SOLVERS, Velocity, integrate, rules_nfe, solver_rules

ADAPTIVE_SOLVERS = ("dopri5",)


@dataclass
class SampleStats:
    """What a sampling run did: ``nfe`` is the exact number of velocity calls per sample."""

    solver: str
    steps: int
    nfe: int
    times: list[float] = field(default_factory=list)
    note: str = ""


class _CountingVelocity:
    """A velocity that counts its calls (the exact NFE)."""

    def __init__(self, velocity: Velocity):
        self.velocity, self.calls = velocity, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.velocity(x, t)


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


def _resolve_steps(solver: str, steps: int | None, nfe: int | None, schedule: Schedule, skip_last: bool):
    """The step count from exactly one of ``steps``, an ``nfe`` budget or an explicit schedule."""
    fixed = explicit_steps(schedule)
    if steps is not None and nfe is not None:
        raise LatentFMError("give either steps or an nfe budget, not both")
    if steps is None and nfe is None:
        if fixed is None:
            raise LatentFMError("give either steps or an nfe budget (or an explicit schedule)")
        return fixed, ""
    if steps is not None:
        if steps < 1:
            raise LatentFMError(f"steps={steps} must be at least 1")
        return steps, ""
    return _steps_for_budget(solver, nfe, skip_last)


def _run_searched(schedule: SearchedSchedule, counted: _CountingVelocity, x0: torch.Tensor, steps, nfe):
    if steps is not None and steps != len(schedule.rules):
        raise LatentFMError(f"the searched schedule has {len(schedule.rules)} steps, not steps={steps}")
    if nfe is not None and nfe != schedule.nfe:
        raise LatentFMError(f"the searched schedule spends {schedule.nfe} NFE, not nfe={nfe}; search one for {nfe}")
    x = schedule.run(counted, x0)
    return x, SampleStats("searched", len(schedule.rules), counted.calls, list(schedule.times))


def _adaptive(counted: _CountingVelocity, x0: torch.Tensor, rtol: float, atol: float) -> tuple[torch.Tensor, str]:
    """dopri5 from torchdiffeq over [0, 1] with the given tolerances."""
    from torchdiffeq import odeint

    def field(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return counted(x, t.to(torch.float32).expand(x.shape[0])).to(x.dtype)

    span = torch.tensor([0.0, 1.0], dtype=torch.float64, device=x0.device)
    return odeint(field, x0, span, rtol=rtol, atol=atol, method="dopri5")[-1], f"dopri5 rtol={rtol} atol={atol}"


def _check_options(solver: str, schedule, steps: int | None, nfe: int | None, options: dict[str, Any]) -> None:
    """Refuse settings that would be silently ignored."""
    searched = isinstance(schedule, SearchedSchedule)
    allowed = set() if searched else {"rtol", "atol"} if solver in ADAPTIVE_SOLVERS else {"skip_last"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        uses = "a searched schedule takes no options" if searched else f"{solver} takes {', '.join(sorted(allowed))}"
        raise LatentFMError(f"sampling option {unknown[0]!r} does not apply: {uses}")
    if options.get("skip_last") and solver != "heun":
        raise LatentFMError(f"skip_last applies to heun only, not {solver!r}")
    if solver in ADAPTIVE_SOLVERS and not searched and (steps is not None or nfe is not None or schedule != "uniform"):
        raise LatentFMError(f"{solver} is adaptive: give rtol/atol, not steps, nfe or a schedule")


@torch.no_grad()
def sample(
    velocity: Velocity,
    x0: torch.Tensor,
    solver: str = "heun",
    steps: int | None = None,
    nfe: int | None = None,
    schedule: Schedule | SearchedSchedule = "uniform",
    **options: Any,
) -> tuple[torch.Tensor, SampleStats]:
    """Solve ``dx/dt = velocity(x, t)`` from ``x0`` at t=0 to t=1.

    Args:
        velocity: ``velocity(x, t) -> v`` with ``t`` a float tensor of shape ``[B]``.
        x0: the source sample (batch first); the state keeps its dtype.
        solver: a fixed-step solver (``euler``, ``heun``, ``midpoint``, ``rk4``, ``ab2``, ``ab3``, ``pc``; see
            ``latentfm.sampling.solvers``) or the adaptive ``dopri5``.
        steps: number of solver steps, or
        nfe: a budget of velocity calls per sample; the largest step count that fits is used and ``stats.note``
            says so when it spends less.
        schedule: a named schedule (``uniform``, ``shift:S``, ``edm:RHO``, ``cosine``), an explicit increasing
            list of times from 0 to 1, or a ``SearchedSchedule`` (then it is the whole recipe: times and
            per-step rules, and ``solver`` is ignored).
        options: ``skip_last=True`` ends Heun with an Euler step (EDM); ``rtol``/``atol`` for dopri5
            (default 1e-5 each).

    Returns:
        ``(x1, stats)`` with ``stats.nfe`` the exact number of velocity calls per sample.

    Example:
        >>> x1, stats = sample(lambda x, t: torch.ones_like(x), torch.zeros(2, 3), solver="euler", nfe=4)
        >>> x1[0].tolist(), stats.nfe
        ([1.0, 1.0, 1.0], 4)
    """
    counted = _CountingVelocity(velocity)
    _check_options(solver, schedule, steps, nfe, options)
    if isinstance(schedule, SearchedSchedule):
        return _run_searched(schedule, counted, x0, steps, nfe)
    if solver in ADAPTIVE_SOLVERS:
        x, note = _adaptive(counted, x0, options.get("rtol", 1e-5), options.get("atol", 1e-5))
        return x, SampleStats(solver, 0, counted.calls, [0.0, 1.0], note)
    if solver not in FIXED_SOLVERS:
        raise LatentFMError(f"solver={solver!r} is unknown; use one of {', '.join(FIXED_SOLVERS + ADAPTIVE_SOLVERS)}")
    skip_last = bool(options.get("skip_last", False))
    n_steps, note = _resolve_steps(solver, steps, nfe, schedule, skip_last)
    times = time_grid(schedule, n_steps).tolist()
    x = integrate(counted, x0, times, solver_rules(solver, n_steps, skip_last))
    return x, SampleStats(solver=solver, steps=n_steps, nfe=counted.calls, times=times, note=note)
