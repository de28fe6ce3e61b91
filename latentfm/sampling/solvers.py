"""One-step ODE updates ``x(t) -> x(t_next)`` for ``dx/dt = velocity(x, t)``.

Each step takes python floats for the times (float64 arithmetic) and keeps the dtype of ``x``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _call(velocity: Velocity, x: torch.Tensor, t: float) -> torch.Tensor:
    """``velocity`` at time ``t`` for the whole batch, in the dtype of ``x``."""
    t_batch = torch.full((x.shape[0],), t, dtype=torch.float32, device=x.device)
    return velocity(x, t_batch).to(x.dtype)


def euler_step(velocity: Velocity, x: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """Explicit Euler: one velocity call."""
    return x + (t_next - t) * _call(velocity, x, t)


def heun_step(velocity: Velocity, x: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """Heun's second-order method (explicit trapezoid): two velocity calls."""
    h = t_next - t
    v = _call(velocity, x, t)
    x_euler = x + h * v
    return x + 0.5 * h * (v + _call(velocity, x_euler, t_next))


@dataclass(frozen=True)
class Solver:
    """A fixed-step solver: its update and how many velocity calls one step costs."""

    step: Callable[[Velocity, torch.Tensor, float, float], torch.Tensor]
    calls_per_step: int


SOLVERS: dict[str, Solver] = {
    "euler": Solver(euler_step, 1),
    "heun": Solver(heun_step, 2),
}
