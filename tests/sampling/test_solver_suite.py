"""The solver suite beyond convergence orders: adaptive dopri5, NFE budgets, schedules, the analytic
Gaussian-mixture flow, and the schedule search."""

import pytest
import torch

from latentfm.errors import LatentFMError
from latentfm.flow.gaussian_mixture import GaussianMixtureFlow
from latentfm.sampling import SamplerSettings, SearchedSchedule, load_schedule, sample, search_schedule, time_grid
from latentfm.sampling.search import candidate_programs
from latentfm.sampling.solvers import adams_bashforth_weights, rules_nfe, solver_rules

from .test_sampling import exact_rotation, rotation

DOPRI5_TIGHT = SamplerSettings("dopri5", options={"rtol": 1e-9, "atol": 1e-9})
DOPRI5_1E8 = SamplerSettings("dopri5", options={"rtol": 1e-8, "atol": 1e-8})


def test_dopri5_is_accurate_and_counts_its_calls():
    x0 = torch.tensor([[1.0, 0.5], [-0.3, 0.8]], dtype=torch.float64)
    calls = []
    x1, stats = sample(lambda x, t: calls.append(1) or rotation(x, t), x0, DOPRI5_TIGHT)
    assert (x1 - exact_rotation(x0)).abs().max() < 1e-7
    assert stats.nfe == len(calls) > 6 and "rtol=1e-09" in stats.note


@pytest.mark.parametrize(
    "solver, skip_last, budget, steps, spent",
    [
        ("pc", False, 8, 7, 8),
        ("ab3", False, 8, 7, 8),
        ("ab2", False, 8, 8, 8),
        ("heun", True, 8, 4, 7),
        ("rk4", False, 6, 1, 4),
        ("midpoint", False, 9, 4, 8),
    ],
)
def test_budgets_pick_the_most_steps_that_fit(solver, skip_last, budget, steps, spent):
    _, stats = sample(rotation, torch.zeros(1, 2), SamplerSettings(solver, budget, options={"skip_last": skip_last}))
    assert (stats.steps, stats.nfe) == (steps, spent)
    assert (stats.note == "") == (spent == budget)


def test_rule_accounting():
    assert rules_nfe(["heun", "pc", "pc"]) == 4 and rules_nfe(["euler", "pc"]) == 3  # pc without a kept velocity
    assert solver_rules("heun", 3, skip_last=True) == ["heun", "heun", "euler"]
    weights = adams_bashforth_weights([1.0, 0.5], 1.5)  # equal steps: the classic AB2 weights 3/2, -1/2
    assert weights == pytest.approx([1.5, -0.5])
    # unequal steps h=0.3 after h_prev=0.2: 1 + h/(2 h_prev) and -h/(2 h_prev)
    assert adams_bashforth_weights([0.3, 0.1], 0.6) == pytest.approx([1.75, -0.75])
    assert adams_bashforth_weights([3.0, 2.0, 1.0], 4.0) == pytest.approx([23 / 12, -16 / 12, 5 / 12])
    with pytest.raises(LatentFMError, match="'skip_first' does not apply"):
        sample(rotation, torch.zeros(1, 2), SamplerSettings("heun", steps=2, options={"skip_first": True}))
    with pytest.raises(LatentFMError, match="heun only"):
        sample(rotation, torch.zeros(1, 2), SamplerSettings("pc", steps=2, options={"skip_last": True}))
    with pytest.raises(LatentFMError, match="adaptive"):
        sample(rotation, torch.zeros(1, 2), SamplerSettings("dopri5", nfe=3))
    for bad in ("shift:nan", "edm:inf"):
        with pytest.raises(LatentFMError, match="schedule"):
            time_grid(bad, 4)


@pytest.mark.parametrize("name", ["uniform", "shift", "shift:0.5", "edm", "edm:3", "cosine"])
def test_named_schedules_increase_from_zero_to_one(name):
    times = time_grid(name, 10)
    assert times.dtype == torch.float64 and len(times) == 11
    assert times[0] == 0.0 and times[-1] == 1.0 and bool((times[1:] > times[:-1]).all())


def test_schedule_shapes():
    torch.testing.assert_close(time_grid("shift:1", 8), time_grid("uniform", 8))
    assert time_grid("shift:3", 8)[4] < 0.5 < time_grid("shift:0.5", 8)[4]  # shift > 1: more steps near noise
    cosine = time_grid("cosine", 8)
    torch.testing.assert_close(cosine + cosine.flip(0), torch.ones(9, dtype=torch.float64))
    edm = time_grid("edm:7", 8)
    assert edm[1] == pytest.approx(1 / (1 + (80 ** (1 / 7) + (0.002 ** (1 / 7) - 80 ** (1 / 7)) / 8) ** 7))
    for bad in ("linear", "shift:x", "shift:-1"):
        with pytest.raises(LatentFMError, match="schedule"):
            time_grid(bad, 4)


def test_gaussian_mixture_velocity_satisfies_the_continuity_equation():
    """d/dt log p + div u + u . grad log p = 0 for the closed-form u and the known marginal p_t."""
    flow = GaussianMixtureFlow.random(dim=2, components=3, scale_range=(0.2, 0.5), seed=1)
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    for time in (0.1, 0.5, 0.9):
        t = torch.full((16,), time, dtype=torch.float64)
        eps = 1e-6
        dlogp_dt = (flow.log_density(x, t + eps) - flow.log_density(x, t - eps)) / (2 * eps)
        grad_logp = torch.autograd.grad(flow.log_density(x, t).sum(), x)[0]
        u = flow.velocity(x, t)
        divergence = sum(torch.autograd.grad(u[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(2))
        residual = dlogp_dt + divergence + (u * grad_logp).sum(1)
        assert residual.abs().max() < 1e-5, (time, residual)


def test_gaussian_mixture_flow_transports_noise_to_the_mixture():
    """A tight dopri5 solve of the closed-form field lands on the mixture's mean and covariance."""
    flow = GaussianMixtureFlow.random(dim=2, components=4, scale_range=(0.15, 0.5), seed=2)
    x0 = torch.randn(4000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x1, _ = sample(flow, x0, DOPRI5_1E8)
    data = flow.sample_data(200_000, seed=4)
    torch.testing.assert_close(x1.mean(0), data.mean(0), atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(x1.T), torch.cov(data.T), atol=0.08, rtol=0)


def test_search_beats_uniform_grids_on_fresh_sources(tmp_path):
    flow = GaussianMixtureFlow.random(dim=16, components=4, scale_range=(0.15, 0.5), seed=5)
    calibration = torch.randn(256, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    schedule = search_schedule(flow, calibration, nfe=6, iterations=30)
    assert schedule.nfe == 6 and rules_nfe(schedule.rules) == 6
    fresh = torch.randn(512, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    reference, _ = sample(flow, fresh, DOPRI5_1E8)

    def rmse(x):
        return float((x - reference).square().mean().sqrt())

    searched, stats = sample(flow, fresh, SamplerSettings(schedule=schedule))
    assert stats.nfe == 6 and stats.solver == "searched"
    uniform = [sample(flow, fresh, SamplerSettings(s, nfe=6))[0] for s in ("euler", "heun", "midpoint", "rk4")]
    uniform_best = min(rmse(x) for x in uniform)
    assert rmse(searched) < uniform_best
    schedule.save(tmp_path / "schedule.json")
    again = load_schedule(tmp_path / "schedule.json")
    assert again == schedule
    torch.testing.assert_close(sample(flow, fresh, SamplerSettings(schedule=again))[0], searched)
    with pytest.raises(LatentFMError, match="spends 6 NFE, not nfe=8"):
        sample(flow, fresh, SamplerSettings(nfe=8, schedule=again))


def test_schedule_files_are_checked(tmp_path):
    with pytest.raises(LatentFMError, match="spend 2 NFE, not the 3"):
        SearchedSchedule([0.0, 0.5, 1.0], ["euler", "euler"], 3)
    with pytest.raises(LatentFMError, match="strictly increasing"):
        SearchedSchedule([0.0, 0.7, 0.5, 1.0], ["euler"] * 3, 3)
    (tmp_path / "bad.json").write_text('{"times": [0, 1]}')
    with pytest.raises(LatentFMError, match="not a latentfm schedule"):
        load_schedule(tmp_path / "bad.json")
    assert set(candidate_programs(8)) == {"euler", "heun", "midpoint", "rk4", "pc", "ab2", "ab3", "lms"}
    with pytest.raises(LatentFMError, match="lms steps needs one list of coefficients"):
        SearchedSchedule([0.0, 0.5, 1.0], ["lms", "lms"], 2)
    with pytest.raises(LatentFMError, match="2 to 6 coefficients"):
        SearchedSchedule([0.0, 0.5, 1.0], ["lms", "lms"], 2, [[1.0, 1.0], [1.0]])
    (tmp_path / "ragged.json").write_text(
        '{"format": "latentfm-schedule/1", "times": [0, [0.5], 1], "rules": ["euler", "euler"], "nfe": 2}'
    )
    with pytest.raises(LatentFMError, match="malformed"):
        load_schedule(tmp_path / "ragged.json")
    assert "heun+euler_last" in candidate_programs(7) and "rk4" not in candidate_programs(7)


def test_cli_search_then_sample_and_bench(tmp_path, tiny_overrides, capsys):
    from latentfm.cli import main
    from latentfm.config import load_config
    from latentfm.training.trainer import Trainer

    Trainer(load_config(None, [*tiny_overrides, "train.steps=4", "sample.cfg=1.5"])).run()
    run, schedule = tmp_path / "run", tmp_path / "schedule.json"
    common = ["--device", "cpu", "--n", "20", "--iterations", "5"]
    assert main(["search-schedule", "--checkpoint", str(run), "--nfe", "4", "--out", str(schedule), *common]) == 0
    assert load_schedule(schedule).nfe == 4 and load_schedule(schedule).info["cfg"] == 1.5  # the recipe's guidance
    out = tmp_path / "samples"
    assert main(["sample", "--checkpoint", str(run), "--schedule", str(schedule), "--out", str(out), "--n", "2"]) == 0
    assert '"nfe": 4' in (out / "stats.json").read_text()
    bench = ["bench", "solvers", "--no-mixture", "--checkpoint", str(run), "--nfe", "2,4", "--search-nfe", "4", *common]
    assert main([*bench, "--out", str(tmp_path / "bench")]) == 0
    table = (tmp_path / "bench" / "solvers.md").read_text()
    from PIL import Image

    assert Image.open(tmp_path / "bench" / "checkpoint_rmse.png").size == (760, 460)
    assert "| rk4 | uniform |  | " in table  # rk4 cannot meet 2 NFE: an empty cell
    assert "| searched |" in table and "| ab3 | cosine |" in table
    assert main(["sample", "--checkpoint", str(run), "--schedule", "0,0.5,x", "--out", str(out)]) == 2
    assert "a list of times" in capsys.readouterr().err


def test_learned_multistep_with_adams_bashforth_weights_is_adams_bashforth():
    """An lms schedule with state weights (1, 0) and AB velocity weights reproduces the ab2 solver."""
    times = [0.0, 0.2, 0.45, 0.7, 1.0]
    coefficients = [[1.0, 0.0, 1.0, 0.0]]
    for i in range(1, 4):
        nodes = [times[i], times[i - 1]]
        coefficients.append([1.0, 0.0, *adams_bashforth_weights(nodes, times[i + 1])])
    schedule = SearchedSchedule(times, ["lms"] * 4, 4, coefficients)
    x0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    expected, _ = sample(rotation, x0, SamplerSettings("ab2", schedule=times))
    torch.testing.assert_close(sample(rotation, x0, SamplerSettings(schedule=schedule))[0], expected)
