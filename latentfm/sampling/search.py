"""Solver-schedule search (after USF/S³ and bespoke solvers): tune the time grid and per-step rules of a
fixed NFE budget to one velocity field, by minimising the endpoint error against an accurate solve.

For each candidate program (a list of per-step rules that spends exactly the budget: every fixed-step
solver, Heun with an Euler last step, FlowTurbo's pseudo-corrector, and a learned multistep ``lms`` whose
per-step weights of the last three velocities start as Adams-Bashforth's), the best named schedule is the
start; the most promising programs then have their times (and ``lms`` weights) optimised by gradient
descent (L-BFGS) through the solver (times are a cumulative softmax, so they stay strictly increasing from 0 to 1).
The program with the lowest calibration error wins. Judge the result on sources it never saw.
"""

from __future__ import annotations

import torch

from latentfm.errors import LatentFMError
from latentfm.progress import progress_bar
from latentfm.sampling.program import LMS_HISTORY, SearchedSchedule
from latentfm.sampling.sample import sample
from latentfm.sampling.schedules import named_grid
from latentfm.sampling.settings import DEFAULT_NFE, SamplerSettings
from latentfm.sampling.solvers import (
    ODE_SOLVERS,
    Velocity,
    adams_bashforth_weights,
    integrate,
    rules_nfe,
    solver_rules,
)

START_SCHEDULES = ("uniform", "shift:2", "shift:3", "shift:0.5", "edm:7", "cosine")


def candidate_programs(nfe: int) -> dict[str, list[str]]:
    """Per-step rule lists that spend exactly ``nfe`` calls, by name."""
    programs = {"lms": ["lms"] * nfe} if nfe >= 1 else {}
    for solver in ODE_SOLVERS:
        for skip_last in (False, True) if solver == "heun" else (False,):
            steps = next((n for n in range(nfe, 0, -1) if rules_nfe(solver_rules(solver, n, skip_last)) == nfe), 0)
            if steps:
                programs[solver + ("+euler_last" if skip_last else "")] = solver_rules(solver, steps, skip_last)
    return programs


def _endpoint_error(velocity, x0, target, times, rules, coefficients=None) -> torch.Tensor:
    """Mean squared endpoint error over all elements."""
    return (integrate(velocity, x0, times, rules, coefficients).double() - target.double()).square().mean()


def _times_from_logits(logits: torch.Tensor) -> torch.Tensor:
    inner = torch.cumsum(torch.softmax(logits, 0), 0)[:-1]
    return torch.cat([inner.new_zeros(1), inner, inner.new_ones(1)])


def _start_coefficients(rules: list[str], times: torch.Tensor) -> torch.Tensor | None:
    """Where ``lms`` coefficients start: Adams-Bashforth (state weights 1, 0, 0 and velocity weights of order
    rising to LMS_HISTORY on ``times``)."""
    if "lms" not in rules:
        return None
    rows = torch.zeros(len(rules), 2 * LMS_HISTORY, dtype=torch.float64)
    rows[:, 0] = 1.0
    for i in range(len(rules)):
        nodes = times[: i + 1].flip(0)[:LMS_HISTORY].tolist()
        weights = adams_bashforth_weights(nodes, float(times[i + 1]))
        rows[i, LMS_HISTORY : LMS_HISTORY + len(nodes)] = torch.tensor(weights)
    return rows


def _tune(velocity, x0, target, rules, times: torch.Tensor, iterations: int):
    """L-BFGS on the logits of the step sizes (and the lms coefficients): the objective is deterministic and
    smooth, where Adam oscillates. Returns the best error seen with its times and coefficients."""
    logits = torch.log(times[1:] - times[:-1]).clone().requires_grad_(True)
    coefficients = _start_coefficients(rules, times)
    params = [logits] if coefficients is None else [logits, coefficients.requires_grad_(True)]
    optimizer = torch.optim.LBFGS(
        params,
        max_iter=iterations,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-12,  # the errors are small, so are their gradients: stop on the iteration budget
        tolerance_change=1e-14,
    )
    best: list = [float("inf"), times, coefficients]

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        candidate = _times_from_logits(logits)
        with torch.enable_grad():
            error = _endpoint_error(velocity, x0, target, candidate, rules, coefficients)
            error.backward()
        value = float(error.detach())
        if value < best[0]:  # NaN never compares smaller
            best[:] = [
                value,
                candidate.detach().clone(),
                None if coefficients is None else coefficients.detach().clone(),
            ]
        return error

    optimizer.step(closure)
    return tuple(best)


def search_schedule(
    velocity: Velocity,
    x0_calibration: torch.Tensor,
    nfe: int = DEFAULT_NFE,
    reference: torch.Tensor | None = None,
    iterations: int = 100,
    keep: int = 3,
    progress: bool = False,
) -> SearchedSchedule:
    """The program and time grid of ``nfe`` calls with the lowest endpoint error on ``x0_calibration``.

    ``reference`` is the accurate endpoint of the calibration sources (default: dopri5 at rtol=atol=1e-6).
    The ``keep`` best programs from their best named schedule, and ``lms``, are optimised by at most
    ``iterations`` L-BFGS iterations each. More calibration sources generalise better: the endpoint error of
    a multimodal flow is dominated by the few sources that land in the wrong mode.
    ``velocity`` must be differentiable in ``x`` and ``t``.
    """
    programs = candidate_programs(nfe)
    if not programs:
        raise LatentFMError(f"no solver spends exactly nfe={nfe}; use nfe >= 1")
    if reference is None:
        dopri5 = SamplerSettings("dopri5", options={"rtol": 1e-6, "atol": 1e-6})
        reference, _ = sample(velocity, x0_calibration, dopri5)
    starts = []
    with torch.no_grad():
        for name, rules in programs.items():
            for schedule in START_SCHEDULES:
                times = named_grid(schedule, len(rules))
                coefficients = _start_coefficients(rules, times)
                error = float(_endpoint_error(velocity, x0_calibration, reference, times, rules, coefficients))
                starts.append((error, name, schedule, times))
    best_start = {}
    for error, name, schedule, times in sorted(starts, key=lambda s: s[0]):
        best_start.setdefault(name, (error, schedule, times))
    ranked = sorted(best_start.items(), key=lambda item: item[1][0])
    chosen = ranked[:keep] + [item for item in ranked[keep:] if item[0] == "lms"]  # always tune the lms weights
    results = []
    for name, (start_error, schedule, times) in progress_bar(chosen, desc="searching", show=progress):
        error, tuned, coefficients = _tune(velocity, x0_calibration, reference, programs[name], times, iterations)
        results.append((error, name, schedule, start_error, tuned, coefficients))
    error, name, schedule, start_error, tuned, coefficients = min(results, key=lambda r: r[0])
    tuned_rmse = {r[1]: r[0] ** 0.5 for r in results}
    info = {
        "program": name,
        "start_schedule": schedule,
        "calibration_rmse": error**0.5,
        "start_rmse": start_error**0.5,
        "calibration_samples": int(x0_calibration.shape[0]),
        "iterations": iterations,
        "tuned_programs_rmse": tuned_rmse,
        "start_rmse_by_program": {program: start[0] ** 0.5 for program, start in best_start.items()},
    }
    coefficients = None if coefficients is None else coefficients.tolist()
    return SearchedSchedule(tuned.tolist(), programs[name], nfe, coefficients, info)
