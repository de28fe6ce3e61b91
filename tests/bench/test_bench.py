"""bench/: the solver table, its Markdown and chart, and the names of ``bench turbo``'s samplers. The commands
themselves run on a trained checkpoint in tests/sampling/test_turbo.py and tests/sampling/test_solver_suite.py."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from latentfm.bench.plot import save_line_chart
from latentfm.bench.solvers import markdown_table, rmse, solver_table
from latentfm.bench.turbo import markdown_turbo, named_sampler
from latentfm.errors import LatentFMError
from latentfm.sampling import SamplerSettings


def rotation(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """dx/dt = (-y, x): the exact endpoint is x0 rotated by one radian."""
    return torch.stack([-x[:, 1], x[:, 0]], dim=1)


def test_the_solver_table_orders_solvers_by_their_order():
    x0 = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    angle = torch.tensor(1.0, dtype=torch.float64)
    exact = torch.stack(
        [x0[:, 0] * angle.cos() - x0[:, 1] * angle.sin(), x0[:, 0] * angle.sin() + x0[:, 1] * angle.cos()], 1
    )
    rows = solver_table(rotation, x0, exact, nfes=(4, 8), solvers=("euler", "heun", "rk4"), schedules=("uniform",))
    error = {(row["solver"], row["budget"]): row["rmse"] for row in rows}
    assert error["rk4", 8] < error["heun", 8] < error["euler", 8]
    assert error["euler", 8] < error["euler", 4]  # more steps, less error
    assert all(row["nfe"] <= row["budget"] for row in rows) and rmse(exact, exact) == 0.0
    table = markdown_table(rows)
    assert table.splitlines()[0] == "| solver | schedule | NFE 4 | NFE 8 |" and "| rk4 | uniform |" in table


def test_a_budget_below_a_solvers_minimum_leaves_its_cell_empty():
    x0 = torch.zeros(2, 2, dtype=torch.float64)
    rows = solver_table(rotation, x0, x0, nfes=(1, 2), solvers=("euler", "rk4"), schedules=("uniform",))
    assert {(row["solver"], row["budget"]) for row in rows} == {("euler", 1), ("euler", 2)}


def test_the_chart_is_a_png(tmp_path):
    save_line_chart(
        {"euler": [(4, 0.5), (8, 0.25)], "heun": [(4, 0.1), (8, 0.02)]}, tmp_path / "c.png", "t", "NFE", "e"
    )
    with Image.open(tmp_path / "c.png") as image:
        assert image.size == (760, 460) and len(image.convert("RGB").getcolors(maxcolors=1 << 16)) > 3


def test_turbo_sampler_names():
    recipe = SamplerSettings(cfg=2.0, guidance_interval=(0.25, 1.0))
    heun = named_sampler("heun:16@cosine", recipe)
    assert (heun.solver, heun.nfe, heun.schedule, heun.cfg, heun.guidance_interval) == (
        "heun",
        16,
        "cosine",
        2.0,
        (0.25, 1.0),
    )
    assert named_sampler("H1P5R2", recipe).rules is not None
    for bad in ("heun", "heun:many", "euler:8@nowhere"):
        with pytest.raises(LatentFMError):
            named_sampler(bad, recipe)


def test_the_turbo_table_lists_the_fastest_first():
    row = {
        "sampler": "a",
        "compile": "eager",
        "nfe": 8,
        "refiner_calls": 0,
        "fd": 1.0,
        "accuracy": 0.5,
        "compile_seconds": 0,
    }
    table = markdown_turbo([{**row, "ms_per_image": 2.0}, {**row, "sampler": "b", "ms_per_image": 1.0}])
    assert table.index("| b |") < table.index("| a |")
