"""Identities of the flow core: endpoints, target = d x_t / dt, time samplers, the loss."""

import math

import pytest
import torch

from latentfm.errors import LatentFMError
from latentfm.flow import CosinePath, LinearPath, build_path, build_time_sampler, flow_matching_loss
from latentfm.flow.paths import cosine_alpha_bar

PATHS = [LinearPath(), LinearPath(sigma_min=1e-2), CosinePath()]


@pytest.mark.parametrize("path", PATHS, ids=["linear", "linear-sigma_min", "cosine"])
def test_endpoints(path):
    x0, x1 = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    at_source, _ = path.sample(x0, x1, torch.zeros(4))
    at_data, _ = path.sample(x0, x1, torch.ones(4))
    torch.testing.assert_close(at_source, x0)
    sigma_min = getattr(path, "sigma_min", 0.0)
    torch.testing.assert_close(at_data, x1 + sigma_min * x0, atol=1e-6, rtol=0)


@pytest.mark.parametrize("path", PATHS, ids=["linear", "linear-sigma_min", "cosine"])
def test_target_is_time_derivative(path):
    x0, x1 = torch.randn(6, 2, 4, 4, dtype=torch.float64), torch.randn(6, 2, 4, 4, dtype=torch.float64)
    t, h = torch.rand(6, dtype=torch.float64) * 0.9 + 0.05, 1e-6
    _, target = path.sample(x0, x1, t)
    forward, _ = path.sample(x0, x1, t + h)
    backward, _ = path.sample(x0, x1, t - h)
    torch.testing.assert_close(target, (forward - backward) / (2 * h), atol=1e-7, rtol=1e-7)


def test_linear_path_values():
    x_t, u_t = LinearPath().sample(torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([0.25]))
    assert x_t.tolist() == [[0.25, 0.25]] and u_t.tolist() == [[1.0, 1.0]]


def test_cosine_path_preserves_variance():
    t = torch.linspace(0, 1, 11)
    path = CosinePath()
    torch.testing.assert_close(path.alpha(t) ** 2 + path.sigma(t) ** 2, torch.ones(11))


def test_cosine_alpha_bar_is_the_cosine_path_in_diffusion_steps():
    steps = torch.arange(0, 1000, 37, dtype=torch.float64)
    alpha_bar = torch.tensor([cosine_alpha_bar(int(s), offset=0.0) for s in steps], dtype=torch.float64)
    path_alpha = CosinePath().alpha(1 - steps / 1000)
    torch.testing.assert_close(alpha_bar, path_alpha**2, atol=1e-12, rtol=0)


def test_cosine_alpha_bar_values_are_pinned():
    # Nichol & Dhariwal's offset 0.008; the exact bits the upsample task has always used
    assert cosine_alpha_bar(0) == 1.0
    assert cosine_alpha_bar(400).hex() == "0x1.4b82439b7e5ecp-1"
    assert cosine_alpha_bar(999).hex() == "0x1.45fbcba4bef82p-19"


def test_build_path_rejects_unknown_and_bad_sigma():
    with pytest.raises(LatentFMError, match="flow.path"):
        build_path("spiral")
    with pytest.raises(LatentFMError, match="sigma_min"):
        build_path("linear", sigma_min=1.5)


@pytest.mark.parametrize("name,loc,scale", [("uniform", 0, 1), ("logit_normal", 0.5, 1.0), ("mode", 0, 1.29)])
def test_time_samplers_in_range_and_seeded(name, loc, scale):
    draw = build_time_sampler(name, loc, scale)
    first = draw(10_000, torch.Generator().manual_seed(1), torch.device("cpu"))
    again = draw(10_000, torch.Generator().manual_seed(1), torch.device("cpu"))
    assert first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, again)


def test_logit_normal_location_moves_mass_towards_data():
    draw = build_time_sampler("logit_normal", loc=1.0, scale=1.0)
    t = draw(100_000, torch.Generator().manual_seed(0), torch.device("cpu"))
    # median of sigmoid(1 + n) is sigmoid(1)
    assert abs(t.median().item() - 1 / (1 + math.exp(-1))) < 0.01


def test_uniform_mean_and_mode_sampler_is_heavier_in_the_middle():
    gen = torch.Generator().manual_seed(0)
    uniform = build_time_sampler("uniform")(100_000, gen, torch.device("cpu"))
    assert abs(uniform.mean().item() - 0.5) < 0.01
    mode = build_time_sampler("mode", scale=1.29)(100_000, gen, torch.device("cpu"))
    middle = lambda t: ((t > 0.25) & (t < 0.75)).float().mean().item()  # noqa: E731
    assert middle(mode) > middle(uniform) + 0.05


def test_time_sampler_errors():
    with pytest.raises(LatentFMError, match="t_sampler"):
        build_time_sampler("beta")
    with pytest.raises(LatentFMError, match="t_scale"):
        build_time_sampler("logit_normal", scale=0)
    with pytest.raises(LatentFMError, match="t_scale"):
        build_time_sampler("mode", scale=5)


def test_loss_plain_weighted_and_masked():
    predicted, target = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    target[1] = 3.0
    assert flow_matching_loss(predicted, target).item() == pytest.approx((1 + 9) / 2)
    assert flow_matching_loss(predicted, target, weights=torch.tensor([1.0, 0.0])).item() == pytest.approx(1.0)
    mask = torch.zeros(2, 1, 2, 2)
    mask[:, :, 0, 0] = 1
    target[:, :, 1, 1] = 100.0  # outside the mask: must not count
    assert flow_matching_loss(predicted, target, mask=mask).item() == pytest.approx((1 + 9) / 2)


def test_loss_gradient_flows():
    predicted = torch.zeros(3, 2, requires_grad=True)
    flow_matching_loss(predicted, torch.ones(3, 2)).backward()
    torch.testing.assert_close(predicted.grad, torch.full((3, 2), -2.0 / 6))
