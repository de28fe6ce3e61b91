"""Solvers, time grids, NFE accounting and classifier-free guidance."""

import math

import pytest
import torch

from latentfm.condition import Condition
from latentfm.errors import LatentFMError
from latentfm.sampling import GuidedVelocity, SamplerSettings, heun_sampler, sample, time_grid


def rotation(x, t):
    """dx/dt = A x with A a rotation generator: exact solution is a rotation by angle t."""
    return torch.stack([-x[:, 1], x[:, 0]], dim=1)


def exact_rotation(x0, angle=1.0):
    c, s = math.cos(angle), math.sin(angle)
    return torch.stack([c * x0[:, 0] - s * x0[:, 1], s * x0[:, 0] + c * x0[:, 1]], dim=1)


def time_dependent(x, t):
    """dx/dt = 3 t^2 x: exact x(1) = x(0) * e."""
    return 3 * t[:, None].to(x.dtype) ** 2 * x


ORDERS = [("euler", 1), ("heun", 2), ("midpoint", 2), ("rk4", 4), ("ab2", 2), ("ab3", 3), ("pc", 2)]


@pytest.mark.parametrize("solver,order", ORDERS)
@pytest.mark.parametrize("field,exact", [(rotation, exact_rotation), (time_dependent, lambda x: x * math.e)])
def test_convergence_order(solver, order, field, exact):
    x0 = torch.tensor([[1.0, 0.5], [-0.3, 0.8]], dtype=torch.float64)
    errors = [(sample(field, x0, SamplerSettings(solver, steps=n))[0] - exact(x0)).abs().max().item() for n in (32, 64)]
    measured = math.log2(errors[0] / errors[1])
    assert abs(measured - order) < 0.25, (errors, measured)


def test_exact_nfe_and_budget():
    x0 = torch.zeros(3, 2)
    _, stats = sample(rotation, x0, SamplerSettings("heun", nfe=8))
    assert (stats.nfe, stats.steps) == (8, 4)
    _, stats = sample(rotation, x0, SamplerSettings("heun", nfe=9))
    assert (stats.nfe, stats.steps) == (8, 4) and "nfe budget 9" in stats.note
    _, stats = sample(rotation, x0, SamplerSettings("euler", steps=5))
    assert stats.nfe == 5 and len(stats.times) == 6


def test_budget_errors():
    x0 = torch.zeros(1, 2)
    with pytest.raises(LatentFMError, match="at least 2 NFE"):
        sample(rotation, x0, SamplerSettings("heun", nfe=1))
    with pytest.raises(LatentFMError, match="not both"):
        sample(rotation, x0, SamplerSettings(steps=2, nfe=4))
    with pytest.raises(LatentFMError, match="unknown"):
        sample(rotation, x0, SamplerSettings("leapfrog", steps=2))


def test_state_keeps_dtype_and_explicit_schedule():
    x0 = torch.ones(2, 2, dtype=torch.float16)
    x1, stats = sample(lambda x, t: torch.ones_like(x), x0, SamplerSettings("euler", schedule=[0.0, 0.1, 0.5, 1.0]))
    assert x1.dtype == torch.float16 and stats.steps == 3 and stats.times == [0.0, 0.1, 0.5, 1.0]
    torch.testing.assert_close(x1, torch.full((2, 2), 2.0, dtype=torch.float16))


def test_time_grid_checks():
    assert time_grid("uniform", 4).dtype == torch.float64
    with pytest.raises(LatentFMError, match="start at 0"):
        time_grid([0.1, 1.0], 1)
    with pytest.raises(LatentFMError, match="increasing"):
        time_grid([0.0, 0.6, 0.5, 1.0], 3)


class AffineToyModel(torch.nn.Module):
    """v = label-dependent constant: class c gives c, the null label gives -1."""

    def __init__(self):
        super().__init__()
        self.calls, self.batch_sizes = 0, []

    def forward(self, x, t, cond):
        self.calls += 1
        self.batch_sizes.append(x.shape[0])
        value = torch.where(cond.labels == 10, -1.0, cond.labels.float())
        return value.view(-1, 1).expand_as(x)


def test_guidance_formula_batched_once():
    model = AffineToyModel()
    labels = torch.tensor([2, 5])
    velocity = GuidedVelocity(model, Condition(labels=labels), 3.0, Condition(labels=torch.tensor([10, 10])))
    v = velocity(torch.zeros(2, 4), torch.zeros(2))
    expected = -1 + 3.0 * (labels.float() + 1)  # v_u + w (v_c - v_u)
    torch.testing.assert_close(v, expected.view(-1, 1).expand(2, 4))
    assert model.calls == 1 and model.batch_sizes == [4] and velocity.network_passes == 2
    assert labels.tolist() == [2, 5]  # the caller's labels are not modified


def test_guidance_scale_one_and_interval_use_one_pass():
    model = AffineToyModel()
    null = Condition(labels=torch.tensor([10]))
    plain = GuidedVelocity(model, Condition(labels=torch.tensor([4])), cfg_scale=1.0, uncond=null)
    torch.testing.assert_close(plain(torch.zeros(1, 3), torch.zeros(1)), torch.full((1, 3), 4.0))
    limited = GuidedVelocity(model, Condition(labels=torch.tensor([4])), 2.0, null, interval=(0.5, 1.0))
    limited(torch.zeros(1, 3), torch.tensor([0.2]))
    limited(torch.zeros(1, 3), torch.tensor([0.7]))
    assert limited.network_passes == 3 and model.batch_sizes[-2:] == [1, 2]
    _, stats = sample(limited, torch.zeros(1, 3), SamplerSettings("euler", steps=4))
    assert stats.nfe == 4  # a guided call counts once


def test_sampler_settings_defaults_budget_and_validation():
    default = SamplerSettings()
    assert (default.solver, default.budget, default.cfg) == ("midpoint", 8, 1.0)
    assert SamplerSettings(solver="euler", schedule=[0.0, 0.5, 1.0]).budget is None  # the list fixes 2 steps
    assert SamplerSettings(solver="dopri5").budget is None
    _, stats = sample(lambda x, t: x, torch.zeros(1, 1))
    assert (stats.solver, stats.nfe, stats.steps) == ("midpoint", 8, 4)
    for bad, message in [
        ({"solver": "dopri5", "nfe": 8}, "adaptive"),
        ({"cfg": -1.0}, "cfg=-1.0"),
        ({"guidance_interval": (0.8, 0.2)}, "guidance_interval"),
        ({"solver": "euler", "options": {"rtol": 1e-3}}, "'rtol' does not apply"),
        ({"solver": "leapfrog"}, "solver='leapfrog' is unknown"),
    ]:
        with pytest.raises(LatentFMError, match=message):
            SamplerSettings(**bad)


def test_sampler_settings_with_replaces_the_budget_and_sample_takes_settings():
    recipe = SamplerSettings(solver="euler", nfe=8, cfg=2.0)
    assert recipe.with_(steps=3).nfe is None and recipe.with_(steps=3).steps == 3
    assert recipe.with_(solver="dopri5").nfe is None  # an adaptive solver drops the fixed budget
    assert recipe.with_(schedule=[0.0, 0.3, 1.0]).nfe is None
    assert recipe.with_(cfg=1.0).nfe == 8
    x_settings, stats = sample(lambda x, t: torch.ones_like(x), torch.zeros(2, 1), settings=recipe.with_(nfe=4))
    x_positional, _ = sample(lambda x, t: torch.ones_like(x), torch.zeros(2, 1), SamplerSettings("euler", nfe=4))
    assert torch.equal(x_settings, x_positional) and stats.nfe == 4


def test_sample_without_settings_is_the_default_sampler():
    velocity = lambda x, t: -x * t[:, None]  # noqa: E731
    x0 = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_default, default_stats = sample(velocity, x0)  # no settings: the library default, midpoint at 8 NFE
    x_explicit, explicit_stats = sample(velocity, x0, SamplerSettings())
    assert torch.equal(x_default, x_explicit) and default_stats == explicit_stats
    assert (default_stats.solver, default_stats.nfe) == ("midpoint", 8)


def test_heun_sampler_is_the_heun_solver():
    velocity = lambda x, t: -x * t[:, None]  # noqa: E731
    x0 = torch.randn(3, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected, _ = sample(velocity, x0, SamplerSettings("heun", steps=5))
    assert torch.allclose(heun_sampler(velocity, x0, steps=5), expected, rtol=0, atol=1e-15)
