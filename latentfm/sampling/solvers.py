"""Fixed-step ODE solvers for ``dx/dt = velocity(x, t)`` as sequences of per-step update rules.

A solver is a list of rules, one per step of a time grid; ``integrate`` runs any such list. Rules:

- ``euler``: one call.
- ``heun``: the explicit trapezoid, two calls; its second call (the velocity at the predicted end point)
  is kept for the next step.
- ``pc``: FlowTurbo's pseudo-corrector, Heun whose first call is replaced by the velocity kept from the
  previous Heun/pc step: one call when such a velocity exists, else it is a plain Heun step.
- ``midpoint``: two calls; ``rk4``: classic Runge-Kutta, four calls.
- ``lms``: a learned linear multistep step, one call: ``sum_j a_j x_j + h * sum_j c_j v_j`` over the states and
  velocities at this and the previous step starts (newest first), with per-step coefficients
  ``[a_0, .., a_{K-1}, c_0, .., c_{K-1}]`` found by the schedule search (bespoke-solver style). ``a = (1, 0, ..)``
  with Adams-Bashforth's ``c`` is Adams-Bashforth; other ``a`` reach exponential-integrator (DPM-Solver++) forms.
- ``ab2``, ``ab3``: Adams-Bashforth multistep of order 2 and 3 on variable steps, one call; they reuse the
  velocities at earlier step starts and fall back to lower order while fewer exist. The named solver ``ab3``
  starts with one Heun step so that its warm-up keeps third order (an Euler start would cost an order).

Times are python floats (float64 arithmetic); the state keeps the dtype of ``x``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Time = float | torch.Tensor
RULES = ("euler", "heun", "pc", "midpoint", "rk4", "ab2", "ab3", "lms")
FIXED_SOLVERS = ("euler", "heun", "midpoint", "rk4", "ab2", "ab3", "pc")
HISTORY = 3  # step starts kept for multistep rules (ab3 and lms use at most three)
_CALLS = {"euler": 1, "ab2": 1, "ab3": 1, "lms": 1, "midpoint": 2, "rk4": 4, "heun": 2}
_GAUSS_NODES = (0.5 - 0.5 * 0.6**0.5, 0.5, 0.5 + 0.5 * 0.6**0.5)  # 3-point Gauss-Legendre on [0, 1]
_GAUSS_WEIGHTS = (5 / 18, 8 / 18, 5 / 18)


def _call(velocity: Velocity, x: torch.Tensor, t: Time) -> torch.Tensor:
    """``velocity`` at time ``t`` for the whole batch, in the dtype of ``x``."""
    t_batch = torch.as_tensor(t, dtype=torch.float32, device=x.device).expand(x.shape[0])
    return velocity(x, t_batch).to(x.dtype)


@dataclass
class _History:
    """Velocities at earlier step starts (for multistep rules) and the kept end velocity (for ``pc``)."""

    starts: deque[tuple[Time, torch.Tensor]] = field(default_factory=lambda: deque(maxlen=HISTORY))
    states: deque[torch.Tensor] = field(default_factory=lambda: deque(maxlen=HISTORY))
    kept: torch.Tensor | None = None


def adams_bashforth_weights(times: Sequence[Time], t_next: Time) -> list[Time]:
    """Weights ``b_j`` with ``x(t_next) ≈ x(t_n) + h * sum_j b_j v(t_j)`` for nodes ``times`` (newest first,
    ``times[0] = t_n``): the exact integral over ``[t_n, t_next]`` of the polynomial through the velocities."""
    t_n, h = times[0], t_next - times[0]
    weights = []
    for j, t_j in enumerate(times):
        others = [t_k for k, t_k in enumerate(times) if k != j]
        total = 0.0
        for node, weight in zip(_GAUSS_NODES, _GAUSS_WEIGHTS):
            s = t_n + node * h
            basis = 1.0
            for t_k in others:
                basis *= (s - t_k) / (t_j - t_k)
            total += weight * basis
        weights.append(total)
    return weights


def _step(
    rule: str, f: Velocity, x: torch.Tensor, t: Time, t_next: Time, memory: _History, coefficients=None
) -> torch.Tensor:
    """One step of ``rule`` from ``t`` to ``t_next``, updating ``memory`` (``coefficients`` for ``lms``)."""
    h = t_next - t
    reuse = rule == "pc" and memory.kept is not None
    v0 = memory.kept if reuse else _call(f, x, t)
    memory.starts.append((t, v0))
    memory.states.append(x)
    memory.kept = None
    if rule == "euler":
        return x + h * v0
    if rule in ("heun", "pc"):
        v1 = _call(f, x + h * v0, t_next)
        memory.kept = v1
        return x + 0.5 * h * (v0 + v1)
    if rule == "midpoint":
        return x + h * _call(f, x + 0.5 * h * v0, t + 0.5 * h)
    if rule == "rk4":
        k2 = _call(f, x + 0.5 * h * v0, t + 0.5 * h)
        k3 = _call(f, x + 0.5 * h * k2, t + 0.5 * h)
        k4 = _call(f, x + h * k3, t_next)
        return x + h / 6.0 * (v0 + 2 * k2 + 2 * k3 + k4)
    if rule == "lms":
        history = len(coefficients) // 2
        a, c = coefficients[:history], coefficients[history:]
        states = sum(a_j * x_j for a_j, x_j in zip(a, reversed(memory.states)))
        return states + h * sum(c_j * v_j for c_j, (_, v_j) in zip(c, reversed(memory.starts)))
    order = min(int(rule[2]), len(memory.starts))
    nodes = list(reversed(memory.starts))[:order]
    weights = adams_bashforth_weights([time for time, _ in nodes], t_next)
    return x + h * sum(w * v for w, (_, v) in zip(weights, nodes))


def integrate(
    velocity: Velocity,
    x: torch.Tensor,
    times: Sequence[float] | torch.Tensor,
    rules: Sequence[str],
    coefficients: Sequence[Sequence[float]] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply ``rules[i]`` from ``times[i]`` to ``times[i + 1]`` for every step; returns the end state.

    ``coefficients[i]`` are the state and velocity weights of an ``lms`` step (newest first).
    ``times`` and ``coefficients`` may be tensors that require grad (the search differentiates through them).
    """
    memory = _History()
    for i, rule in enumerate(rules):
        step_coefficients = None if coefficients is None else coefficients[i]
        x = _step(rule, velocity, x, times[i], times[i + 1], memory, step_coefficients)
    return x


def rules_nfe(rules: Sequence[str]) -> int:
    """The exact number of velocity calls ``integrate`` makes with ``rules``."""
    calls, kept = 0, False
    for rule in rules:
        calls += _CALLS.get(rule, 1 if kept else 2)  # pc: one call when a velocity was kept, else Heun's two
        kept = rule in ("heun", "pc")
    return calls


def solver_rules(solver: str, steps: int, skip_last: bool = False) -> list[str]:
    """The per-step rules of a named fixed-step solver; ``skip_last`` ends Heun with an Euler step (EDM)."""
    if solver == "pc":
        return ["heun"] + ["pc"] * (steps - 1)
    if solver == "ab3":
        return ["heun"] + ["ab3"] * (steps - 1)
    rules = [solver] * steps
    if skip_last and solver == "heun":
        rules[-1] = "euler"
    return rules
