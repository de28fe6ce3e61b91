"""The stochastic sampler (``--solver sde``, ``--noise H``) and the flow's conversions it rests on."""

from __future__ import annotations

import math

import pytest
import torch

from latentfm.errors import LatentFMError
from latentfm.flow import (
    denoised_from_velocity,
    noise_from_velocity,
    score_from_velocity,
    velocity_from_denoised,
    velocity_from_noise,
    velocity_from_score,
)
from latentfm.sampling import SamplerSettings, sample
from latentfm.sampling.solvers import Past, sde_step

MEAN, STD = 1.5, 0.5  # data N(MEAN, STD²): the linear path's exact velocity is known


def exact_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The marginal velocity of the path from N(0, 1) to N(MEAN, STD²): ``E[x1 - x0 | x_t = x]``."""
    t = t.view(-1, *[1] * (x.ndim - 1)).double()
    variance = t**2 * STD**2 + (1 - t) ** 2
    denoised = MEAN + t * STD**2 * (x - t * MEAN) / variance
    noise = (1 - t) * (x - t * MEAN) / variance
    return (denoised - noise).to(x.dtype)


def field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return -x + torch.sin(3 * t)[:, None]


def test_noise_zero_is_euler():
    x0 = torch.randn(5, 3, dtype=torch.float64)
    for nfe in (1, 4, 7):
        euler, _ = sample(field, x0, SamplerSettings(solver="euler", nfe=nfe, schedule="cosine"))
        sde, stats = sample(field, x0, SamplerSettings(solver="sde", nfe=nfe, schedule="cosine"))
        torch.testing.assert_close(sde, euler, atol=1e-6, rtol=0)
        assert stats.nfe == nfe and stats.solver == "sde"


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_the_sde_keeps_the_marginals_of_the_path_as_its_steps_shrink(strength):
    """From the exact velocity of a Gaussian path the samples' spread nears the data's as the steps shrink (the
    step is exact in the limit; on coarse grids the noise costs spread, more for a larger H)."""
    x0 = torch.randn(20000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = []
    for nfe in (16, 64, 256):
        noise = torch.Generator().manual_seed(1)
        draw = lambda step, noise=noise: torch.randn(x0.shape, generator=noise, dtype=torch.float64)  # noqa: E731
        x1, _ = sample(exact_velocity, x0, SamplerSettings(solver="sde", nfe=nfe, noise=strength), noise=draw)
        assert x1.mean().item() == pytest.approx(MEAN, abs=0.02)
        errors.append(abs(x1.std().item() - STD))
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.01


def test_the_last_step_adds_no_noise_and_the_first_draws_afresh():
    v, x = torch.full((2, 3), 2.0), torch.ones(2, 3)
    past = Past(noise=lambda step: torch.full((2, 3), 100.0), noise_strength=1.0)
    end, _ = sde_step(field, x, 0.5, 1.0, v, past)
    torch.testing.assert_close(end, denoised_from_velocity(x, 0.5, v))
    start, _ = sde_step(field, x, 0.0, 0.5, v, past)  # at t = 0 the noise estimate is replaced entirely
    torch.testing.assert_close(start, 0.5 * denoised_from_velocity(x, 0.0, v) + 0.5 * 100.0)


def test_more_noise_keeps_less_of_the_noise_estimate():
    v, x = torch.zeros(1, 1), torch.ones(1, 1)  # denoised and noise estimates both 1
    moves = []
    for strength in (0.0, 0.5, 1.0, 2.0):
        past = Past(noise=lambda step: torch.zeros(1, 1), noise_strength=strength)
        moves.append(sde_step(field, x, 0.25, 0.5, v, past)[0].item())
    kept = [(move - 0.5) / 0.5 for move in moves]  # x' = 0.5 * 1 + 0.5 * m * 1
    assert kept[0] == pytest.approx(1.0) and kept == sorted(kept, reverse=True)
    assert kept[2] == pytest.approx((0.5 * 0.25) / (0.75 * 0.5))  # m = [(1 - t') t / ((1 - t) t')]^(H²), H = 1


@pytest.mark.parametrize("value", [-0.5, math.inf, math.nan])
def test_a_negative_or_infinite_noise_is_refused(value):
    with pytest.raises(LatentFMError, match="must be a finite number >= 0"):
        SamplerSettings(solver="sde", noise=value)


def test_noise_is_the_sde_solvers_alone():
    with pytest.raises(LatentFMError, match="is the sde solver's"):
        SamplerSettings(solver="euler", noise=1.0)
    with pytest.raises(LatentFMError, match="takes no sde"):
        SamplerSettings(solver="sde").with_(turbo="H1P1R0", solver="sde")
    assert SamplerSettings(solver="sde", noise=1.0).with_(solver="euler").noise == 0
    assert SamplerSettings(solver="sde", noise=1.0).with_(nfe=4).noise == 1.0


def test_the_conversions_round_trip():
    x, v, t = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3), torch.rand(4) * 0.8 + 0.1
    torch.testing.assert_close(velocity_from_denoised(x, t, denoised_from_velocity(x, t, v)), v)
    torch.testing.assert_close(velocity_from_noise(x, t, noise_from_velocity(x, t, v)), v)
    torch.testing.assert_close(velocity_from_score(x, t, score_from_velocity(x, t, v)), v)
    t_column = t.view(-1, 1, 1, 1)  # x is the mix of its two estimates
    mixed = t_column * denoised_from_velocity(x, t, v) + (1 - t_column) * noise_from_velocity(x, t, v)
    torch.testing.assert_close(mixed, x)


def test_the_score_of_a_gaussian_path_is_its_true_score():
    x, t = torch.linspace(-2, 3, 11, dtype=torch.float64)[:, None], torch.full((11,), 0.4, dtype=torch.float64)
    variance = 0.4**2 * STD**2 + 0.6**2
    true_score = -(x - 0.4 * MEAN) / variance
    torch.testing.assert_close(score_from_velocity(x, t, exact_velocity(x, t)), true_score)
