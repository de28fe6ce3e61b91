"""Fixed-step ODE solvers for ``dx/dt = velocity(x, t)`` as sequences of per-step update rules.

A solver is a list of rules, one per step of a time grid; ``integrate`` runs any such list. Rules:

- ``euler``: one call.
- ``heun``: the explicit trapezoid, two calls; its second call (the velocity at the predicted end point)
  is kept for the next step.
- ``pc``: FlowTurbo's pseudo-corrector, Heun whose first call is replaced by the velocity kept from the
  previous Heun/pc/refine step: one call when such a velocity exists, else it is a plain Heun step.
- ``refine``: FlowTurbo's refiner step, Heun whose two velocities come from a velocity refiner instead of the
  model: ``v1 = refine(x, t, kept)``, ``v2 = refine(x + h v1, t + h, v1)``; no model call when a velocity is
  kept (else one, for the first), two refiner calls.
- ``midpoint``: two calls; ``rk4``: classic Runge-Kutta, four calls.
- ``lms``: a learned linear multistep step, one call: ``sum_j a_j x_j + h * sum_j c_j v_j`` over the states and
  velocities at this and the previous step starts (newest first), with per-step coefficients
  ``[a_0, .., a_{K-1}, c_0, .., c_{K-1}]`` found by the schedule search (bespoke-solver style). ``a = (1, 0, ..)``
  with Adams-Bashforth's ``c`` is Adams-Bashforth; other ``a`` reach exponential-integrator (DPM-Solver++) forms.
- ``sde``: one call, a stochastic step that keeps the marginals of the linear path (``sde_step``): the noise
  estimate is partly replaced by fresh noise, by how much set by the noise strength ``H`` (0: exactly Euler).
- ``fewstep``: one call, the Euler step of a few-step model told the jump it makes (``Condition.step``): a
  shortcut model's average velocity over the step; a consistency model ignores the jump.
- ``ab2``, ``ab3``: Adams-Bashforth multistep of order 2 and 3 on variable steps, one call; they reuse the
  velocities at earlier step starts and fall back to lower order while fewer exist. The named solver ``ab3``
  starts with one Heun step so that its warm-up keeps third order (an Euler start would cost an order).

Times are python floats (float64 arithmetic); the state keeps the dtype of ``x``.
"""

from __future__ import annotations

import functools
import re
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from latentfm.errors import LatentFMError

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Time = float | torch.Tensor
HISTORY = 3  # step starts kept for multistep rules (ab3 and lms use at most three)
_GAUSS_NODES = (0.5 - 0.5 * 0.6**0.5, 0.5, 0.5 + 0.5 * 0.6**0.5)  # 3-point Gauss-Legendre on [0, 1]
_GAUSS_WEIGHTS = (5 / 18, 8 / 18, 5 / 18)


def heun_sampler(velocity: Velocity, x: torch.Tensor, steps: int = 4) -> torch.Tensor:
    """The canonical second-order sampler, to read first: Heun's method (the explicit trapezoid) on a uniform
    grid from the source at t=0 to data at t=1, two velocity calls per step.

    Example:
        >>> x = heun_sampler(lambda x, t: 2 * t[:, None].to(x.dtype), torch.zeros(1, 1), steps=2)
        >>> x.tolist()  # dx/dt = 2t from 0: x(1) = 1, exact for a trapezoid
        [[1.0]]
    """
    times = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64).tolist()
    for t, t_next in zip(times[:-1], times[1:]):
        h = t_next - t
        v = _call(velocity, x, t)
        v_next = _call(velocity, x + h * v, t_next)
        x = x + 0.5 * h * (v + v_next)
    return x


def _call(velocity: Velocity, x: torch.Tensor, t: Time, step: Time | None = None) -> torch.Tensor:
    """``velocity`` at time ``t`` for the whole batch, in the dtype of ``x``; with ``step``, told the jump of a
    few-step model's call."""
    t_batch = torch.as_tensor(t, dtype=torch.float32, device=x.device).expand(x.shape[0])
    if step is None:
        return velocity(x, t_batch).to(x.dtype)
    step_batch = torch.as_tensor(step, dtype=torch.float32, device=x.device).expand(x.shape[0])
    return velocity(x, t_batch, step_batch).to(x.dtype)


Refine = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``refine(x, t, v) -> v'``: a velocity refiner's estimate of the velocity at ``(x, t)`` from a nearby one."""
Noise = Callable[[int], torch.Tensor]
"""``noise(i) -> ξ``: the fresh standard normal noise of step ``i`` of a stochastic sampler, shaped like the state
(seeded per sample by the caller, so the batch size does not change the samples)."""


@dataclass
class Past:
    """What a step may use besides its start: the earlier steps' starts and states (newest last, at most
    ``HISTORY - 1``) for multistep rules, the step's ``lms`` coefficients and the refiner of ``refine`` steps."""

    starts: deque[tuple[Time, torch.Tensor]] = field(default_factory=lambda: deque(maxlen=HISTORY - 1))
    states: deque[torch.Tensor] = field(default_factory=lambda: deque(maxlen=HISTORY - 1))
    coefficients: Sequence[float] | torch.Tensor | None = None
    refine: Refine | None = None
    noise: Noise | None = None
    noise_strength: float = 0.0
    index: int = 0


def euler_step(f: Velocity, x: torch.Tensor, t: Time, t_next: Time, v: torch.Tensor, past: Past):
    """First order: one call (``v`` at the start)."""
    return x + (t_next - t) * v, None


def heun_step(f: Velocity, x: torch.Tensor, t: Time, t_next: Time, v: torch.Tensor, past: Past):
    """The explicit trapezoid: the velocity at the Euler end point is averaged with ``v``; it is returned to be
    kept (FlowTurbo's pseudo-corrector starts the next step from it)."""
    h = t_next - t
    v_next = _call(f, x + h * v, t_next)
    return x + 0.5 * h * (v + v_next), v_next


def refine_step(f: Velocity, x: torch.Tensor, t: Time, t_next: Time, v: torch.Tensor, past: Past):
    """Heun on the refiner's velocities (FlowTurbo): no model call; the end velocity is kept."""
    h = t_next - t
    v1 = _refined(past.refine, x, t, v)
    v2 = _refined(past.refine, x + h * v1, t_next, v1)
    return x + 0.5 * h * (v1 + v2), v2


def _refined(refine: Refine, x: torch.Tensor, t: Time, v: torch.Tensor) -> torch.Tensor:
    t_batch = torch.as_tensor(t, dtype=torch.float32, device=x.device).expand(x.shape[0])
    return refine(x, t_batch, v).to(x.dtype)


def sde_step(f: Velocity, x: torch.Tensor, t: Time, t_next: Time, v: torch.Tensor, past: Past):
    """A step from ``t`` to ``t_next`` that keeps the marginals of the linear path ``x_t = t x1 + (1 - t) ε``:
    from the denoised estimate ``x̂ = x + (1 - t) v`` and the noise estimate ``ε̂ = x - t v`` (see
    ``latentfm.flow.conversions``), ``x' = t' x̂ + (1 - t') (m ε̂ + sqrt(1 - m²) ξ)`` with fresh noise ``ξ`` and
    ``m = [(1 - t') t / ((1 - t) t')]^(H²)``, ``H = past.noise_strength``. ``H = 0`` keeps the noise estimate
    (``m = 1``: exactly Euler); a larger ``H`` replaces more of it; the last step (``t' = 1``) adds none."""
    denoised, noise = x + (1 - t) * v, x - t * v
    if past.noise_strength == 0 or t_next >= 1:
        return t_next * denoised + (1 - t_next) * noise, None
    kept = ((1 - t_next) * t / ((1 - t) * t_next)) ** (past.noise_strength**2)
    fresh = past.noise(past.index).to(device=x.device, dtype=x.dtype)
    return t_next * denoised + (1 - t_next) * (kept * noise + (1 - kept**2) ** 0.5 * fresh), None


def midpoint_step(f: Velocity, x: torch.Tensor, t: Time, t_next: Time, v: torch.Tensor, past: Past):
    """Second order: the velocity at the half-step Euler point."""
    h = t_next - t
    return x + h * _call(f, x + 0.5 * h * v, t + 0.5 * h), None


def rk4_step(f: Velocity, x: torch.Tensor, t: Time, t_next: Time, v: torch.Tensor, past: Past):
    """Classic fourth-order Runge-Kutta."""
    h = t_next - t
    k2 = _call(f, x + 0.5 * h * v, t + 0.5 * h)
    k3 = _call(f, x + 0.5 * h * k2, t + 0.5 * h)
    k4 = _call(f, x + h * k3, t_next)
    return x + h / 6.0 * (v + 2 * k2 + 2 * k3 + k4), None


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


def _adams_bashforth(order: int, x: torch.Tensor, t: Time, t_next: Time, v: torch.Tensor, past: Past):
    """Adams-Bashforth of ``order`` (lower while fewer step starts exist) on variable steps."""
    nodes = [(t, v), *reversed(past.starts)][:order]
    weights = adams_bashforth_weights([time for time, _ in nodes], t_next)
    return x + (t_next - t) * sum(w * v_j for w, (_, v_j) in zip(weights, nodes))


def ab2_step(f: Velocity, x: torch.Tensor, t: Time, t_next: Time, v: torch.Tensor, past: Past):
    """Adams-Bashforth, second order, one call."""
    return _adams_bashforth(2, x, t, t_next, v, past), None


def ab3_step(f: Velocity, x: torch.Tensor, t: Time, t_next: Time, v: torch.Tensor, past: Past):
    """Adams-Bashforth, third order, one call."""
    return _adams_bashforth(3, x, t, t_next, v, past), None


def lms_step(f: Velocity, x: torch.Tensor, t: Time, t_next: Time, v: torch.Tensor, past: Past):
    """A learned linear multistep step: ``sum_j a_j x_j + h sum_j c_j v_j`` (newest first), one call."""
    history = len(past.coefficients) // 2
    a, c = past.coefficients[:history], past.coefficients[history:]
    states = sum(a_j * x_j for a_j, x_j in zip(a, [x, *reversed(past.states)]))
    velocities = [v, *(v_j for _, v_j in reversed(past.starts))]
    return states + (t_next - t) * sum(c_j * v_j for c_j, v_j in zip(c, velocities)), None


@dataclass(frozen=True)
class Rule:
    """An update rule and its cost: ``calls`` velocity calls per step, one fewer when it ``reuses_kept`` and
    the previous step ``keeps`` its end velocity; ``refiner_calls`` calls of a velocity refiner."""

    step: Callable
    calls: int
    reuses_kept: bool = False
    keeps: bool = False
    refiner_calls: int = 0
    jumps: bool = False  # the call is told the step's length (Condition.step of a few-step model)


RULES: dict[str, Rule] = {  # the single source of NFE accounting
    "euler": Rule(euler_step, 1),
    "heun": Rule(heun_step, 2, keeps=True),
    "pc": Rule(heun_step, 2, reuses_kept=True, keeps=True),
    "refine": Rule(refine_step, 1, reuses_kept=True, keeps=True, refiner_calls=2),
    "midpoint": Rule(midpoint_step, 2),
    "rk4": Rule(rk4_step, 4),
    "sde": Rule(sde_step, 1),
    "fewstep": Rule(euler_step, 1, jumps=True),
    "ab2": Rule(ab2_step, 1),
    "ab3": Rule(ab3_step, 1),
    "lms": Rule(lms_step, 1),
}
ODE_SOLVERS = ("euler", "heun", "midpoint", "rk4", "ab2", "ab3", "pc")  # deterministic, of any velocity(x, t)
FIXED_SOLVERS = (*ODE_SOLVERS, "sde", "fewstep")


def integrate(
    velocity: Velocity,
    x: torch.Tensor,
    times: Sequence[float] | torch.Tensor,
    rules: Sequence[str],
    coefficients: Sequence[Sequence[float]] | torch.Tensor | None = None,
    refine: Refine | None = None,
    compiled: str | None = None,
    noise: Noise | None = None,
    noise_strength: float = 0.0,
) -> torch.Tensor:
    """Apply ``rules[i]`` from ``times[i]`` to ``times[i + 1]`` for every step; returns the end state.

    ``coefficients[i]`` are the state and velocity weights of an ``lms`` step (newest first); ``refine`` is the
    velocity refiner of ``refine`` steps; ``noise`` gives the fresh noise of ``sde`` steps of strength
    ``noise_strength`` (the state's shape; torch's generator when None). ``times`` and ``coefficients`` may be
    tensors that require grad (the search differentiates through them). ``compiled`` (a ``torch.compile``
    mode) runs each kind of step compiled as a whole, the velocity and refiner calls included; times then enter
    as tensors, so one compilation serves every step of that kind.
    """
    if "refine" in rules and refine is None:
        raise LatentFMError("refine steps need a velocity refiner: give one (latentfm sample --refiner RUN)")
    noise = noise or (lambda i: torch.randn_like(x))
    past, kept = Past(refine=refine, noise=noise, noise_strength=noise_strength), None
    for i, name in enumerate(rules):
        past.index = i
        rule, t, t_next = RULES[name], times[i], times[i + 1]
        v = kept if rule.reuses_kept else None
        past.coefficients = None if coefficients is None else coefficients[i]
        block = step_block(name)
        if compiled:
            block, t, t_next = compiled_block(name, compiled), _as_time(t, x), _as_time(t_next, x)
        x_next, kept, v = block(velocity, x, t, t_next, v, past)
        past.starts.append((t, v))
        past.states.append(x)
        x = x_next
    return x


@functools.cache
def step_block(name: str) -> Callable:
    """Rule ``name`` as one block: the velocity at the start when no kept one is given, then the update;
    returns the next state, the velocity to keep (or None) and the start velocity."""
    step, jumps = RULES[name].step, RULES[name].jumps

    def block(f: Velocity, x: torch.Tensor, t: Time, t_next: Time, v: torch.Tensor | None, past: Past):
        if v is None:
            v = _call(f, x, t, t_next - t if jumps else None)
        x_next, kept = step(f, x, t, t_next, v, past)
        return x_next, kept, v

    return block


def _as_time(t: Time, x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float64, device=x.device)


class _CompiledBlock:
    """A step block under ``torch.compile``; where compilation fails (no compiler, an unsupported backend) it
    says so in one line, once, and runs eagerly from then on."""

    def __init__(self, name: str, mode: str):
        self.step = step_block(name)
        self.compiled: Callable | None = torch.compile(self.step, mode=mode)

    def __call__(self, *args):
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except (torch._dynamo.exc.TorchDynamoException, OSError) as error:
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                print(f"note: torch.compile is unavailable here ({first_line}); sampling eagerly", file=sys.stderr)
                self.compiled = None
        return self.step(*args)


_COMPILED: dict[tuple[str, str], _CompiledBlock] = {}


def compiled_block(name: str, mode: str = "default") -> _CompiledBlock:
    """The block of rule ``name`` compiled as a whole (velocity calls, guidance and update): once per process
    and mode, reused by every later step and batch."""
    if (name, mode) not in _COMPILED:
        _COMPILED[name, mode] = _CompiledBlock(name, mode)
    return _COMPILED[name, mode]


def rules_nfe(rules: Sequence[str]) -> int:
    """The exact number of velocity calls ``integrate`` makes with ``rules``."""
    calls, kept = 0, False
    for name in rules:
        rule = RULES[name]
        calls += rule.calls - (rule.reuses_kept and kept)
        kept = rule.keeps
    return calls


def rules_refiner_calls(rules: Sequence[str]) -> int:
    """The number of refiner calls ``integrate`` makes with ``rules`` (per sample, without guidance)."""
    return sum(RULES[name].refiner_calls for name in rules)


MAX_TURBO_STEPS = 1000


def turbo_rules(program: str) -> list[str]:
    """The rules of a FlowTurbo program ``H{n}P{m}R{k}``: n Heun, m pseudo-corrector and k refiner steps.

    Example:
        >>> turbo_rules("H1P2R1"), rules_nfe(turbo_rules("H1P2R1")), rules_nfe(turbo_rules("H0P3R2"))
        (['heun', 'pc', 'pc', 'refine'], 4, 4)
    """
    match = re.fullmatch(r"H([0-9]{1,4})P([0-9]{1,4})R([0-9]{1,4})", program)
    if match is None or not 1 <= sum(map(int, match.groups())) <= MAX_TURBO_STEPS:
        raise LatentFMError(
            f"turbo program {program!r}: write H{{n}}P{{m}}R{{k}} with 1 <= n + m + k <= {MAX_TURBO_STEPS}, e.g. H1P5R3"
        )
    n, m, k = map(int, match.groups())
    return ["heun"] * n + ["pc"] * m + ["refine"] * k


def solver_rules(solver: str, steps: int, skip_last: bool = False) -> list[str]:
    """The per-step rules of a named fixed-step solver; ``skip_last`` ends Heun with an Euler step (EDM)."""
    if solver in ("pc", "ab3"):  # pc needs a kept velocity; ab3 starts with Heun to keep third order
        return ["heun"] + [solver] * (steps - 1)
    rules = [solver] * steps
    if skip_last and solver == "heun":
        rules[-1] = "euler"
    return rules
