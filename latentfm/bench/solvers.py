"""Endpoint error and wall time of every solver and schedule against NFE, for ``latentfm bench solvers``."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from latentfm.atomic import write_bytes_atomic
from latentfm.errors import LatentFMError
from latentfm.metrics.latency import synchronize
from latentfm.progress import progress_bar
from latentfm.sampling.program import SearchedSchedule
from latentfm.sampling.sample import sample
from latentfm.sampling.settings import SamplerSettings, interval_text
from latentfm.sampling.solvers import Velocity

NFES = (4, 6, 8, 10, 16, 32)
SOLVERS = ("euler", "heun", "heun+euler_last", "midpoint", "rk4", "ab2", "ab3", "pc")
SCHEDULES = ("uniform", "shift:3", "edm:7", "cosine")


def rmse(x: torch.Tensor, reference: torch.Tensor) -> float:
    """Root mean squared difference over all elements, in float64."""
    return float((x.double() - reference.double()).square().mean().sqrt())


def timed_sample(velocity: Velocity, x0: torch.Tensor, settings: SamplerSettings) -> tuple[torch.Tensor, Any, float]:
    """``sample`` with the wall time it took (device synchronised at both ends)."""
    synchronize(x0.device)
    start = time.perf_counter()
    x, stats = sample(velocity, x0, settings)
    synchronize(x0.device)
    return x, stats, time.perf_counter() - start


def solver_table(
    velocity: Velocity,
    x0: torch.Tensor,
    reference: torch.Tensor,
    nfes: Sequence[int] = NFES,
    solvers: Sequence[str] = SOLVERS,
    schedules: Sequence[str] = SCHEDULES,
    searched: dict[int, SearchedSchedule] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One row per (solver, schedule, NFE budget) that the solver can meet: exact NFE, RMSE, seconds.

    ``searched`` adds a ``searched`` row per NFE it holds a schedule for.
    """
    jobs = [(solver, schedule, nfe) for solver in solvers for schedule in schedules for nfe in nfes]
    rows = []
    for solver, schedule, nfe in progress_bar(jobs, desc="solvers", show=progress):
        name, skip_last = solver.removesuffix("+euler_last"), solver.endswith("+euler_last")
        try:
            settings = SamplerSettings(name, nfe, schedule=schedule, options={"skip_last": True} if skip_last else {})
            x, stats, seconds = timed_sample(velocity, x0, settings)
        except LatentFMError:  # the budget is below the solver's minimum
            continue
        rows.append(_row(solver, schedule, nfe, stats.nfe, rmse(x, reference), seconds))
    for nfe, schedule in sorted((searched or {}).items()):
        x, stats, seconds = timed_sample(velocity, x0, SamplerSettings(schedule=schedule))
        rows.append(_row("searched", schedule.info.get("program", ""), nfe, stats.nfe, rmse(x, reference), seconds))
    return rows


def _row(solver: str, schedule: str, budget: int, nfe: int, error: float, seconds: float) -> dict[str, Any]:
    return {"solver": solver, "schedule": schedule, "budget": budget, "nfe": nfe, "rmse": error, "seconds": seconds}


def markdown_table(rows: list[dict[str, Any]], value: str = "rmse", digits: int = 4) -> str:
    """Rows pivoted to one line per solver and schedule and one column per NFE budget."""
    budgets = sorted({row["budget"] for row in rows})
    lines = ["| solver | schedule | " + " | ".join(f"NFE {b}" for b in budgets) + " |"]
    lines.append("| --- | --- |" + " ---: |" * len(budgets))
    keys = list(dict.fromkeys((row["solver"], row["schedule"]) for row in rows))
    for solver, schedule in keys:
        cells = {row["budget"]: row for row in rows if (row["solver"], row["schedule"]) == (solver, schedule)}
        values = []
        for budget in budgets:
            row = cells.get(budget)
            text = "" if row is None else f"{row[value]:.{digits}g}"
            values.append(text + ("" if row is None or row["nfe"] == budget else f" ({row['nfe']})"))
        lines.append(f"| {solver} | {schedule} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def _bench_part(
    description: str,
    velocity: Velocity,
    x0: torch.Tensor,
    calibration: torch.Tensor,
    tolerance: float,
    nfes: Sequence[int],
    search_nfes: Sequence[int],
    iterations: int,
) -> dict[str, Any]:
    """The reference (dopri5 at rtol=atol=``tolerance``), the searched schedules and the solver table."""
    from latentfm.sampling.search import search_schedule

    dopri5 = SamplerSettings("dopri5", options={"rtol": tolerance, "atol": tolerance})
    reference, stats = sample(velocity, x0, dopri5)
    searched = {
        nfe: search_schedule(velocity, calibration, nfe, iterations=iterations, progress=True) for nfe in search_nfes
    }
    return {
        "description": description,
        "samples": int(x0.shape[0]),
        "reference_nfe": stats.nfe,
        "searched": {nfe: s.info for nfe, s in searched.items()},
        "rows": solver_table(velocity, x0, reference, nfes, searched=searched, progress=True),
    }


def mixture_bench(
    nfes: Sequence[int] = NFES,
    search_nfes: Sequence[int] = (8,),
    seed: int = 0,
    iterations: int = 100,
    samples: int = 2048,
    calibration_samples: int = 4096,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """The solver table on the analytic 64-dimensional mixture of 8 Gaussians with scales 0.15 to 0.5;
    the reference is dopri5 at rtol=atol=1e-9 on the closed-form velocity, searched schedules are
    calibrated on other sources than they are judged on."""
    from latentfm.flow.gaussian_mixture import GaussianMixtureFlow

    flow = GaussianMixtureFlow.random(dim=64, components=8, scale_range=(0.15, 0.5), seed=seed).to(device)
    x0 = torch.randn(samples, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).to(device)
    generator = torch.Generator().manual_seed(seed + 1)
    calibration = torch.randn(calibration_samples, 64, dtype=torch.float64, generator=generator).to(device)
    description = "64-d mixture of 8 isotropic Gaussians (scales 0.15-0.5), float64, reference dopri5 1e-9"
    return _bench_part(description, flow, x0, calibration, 1e-9, nfes, search_nfes, iterations)


def checkpoint_bench(
    checkpoint: str,
    device: torch.device,
    nfes: Sequence[int] = NFES,
    search_nfes: Sequence[int] = (8,),
    samples: int = 256,
    cfg: float | None = None,
    seed: int = 0,
    iterations: int = 100,
) -> dict[str, Any]:
    """The solver table on a trained checkpoint in its (normalised) latent space: labels cycle through the
    classes, guided like the checkpoint's sample section unless ``cfg`` is given, the reference is dopri5 at
    rtol=atol=1e-6, searched schedules are calibrated on other noise."""
    from latentfm.pipeline import FlowPipeline

    pipe = FlowPipeline.from_checkpoint(checkpoint, device=device)
    recipe = pipe.sampler.with_given(cfg=cfg)
    cfg, interval = recipe.cfg, recipe.guidance_interval
    velocity = pipe.velocity(pipe.cycled_labels(samples), cfg, interval, n=samples)
    x0, calibration = pipe.source(samples, seed), pipe.source(samples, seed + 1)
    description = f"{checkpoint}, guidance {cfg} ({interval_text(interval)}), latents, reference dopri5 1e-6"
    return _bench_part(description, velocity, x0, calibration, 1e-6, nfes, search_nfes, iterations)


def plot_rows(rows: list[dict[str, Any]], path: str, title: str, schedule: str = "uniform") -> None:
    """RMSE against the NFE spent, one line per solver on ``schedule``, plus the searched schedules."""
    from latentfm.bench.plot import save_line_chart

    series: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        if row["schedule"] == schedule or row["solver"] == "searched":
            series.setdefault(row["solver"], []).append((row["nfe"], row["rmse"]))
    save_line_chart(series, path, title, "NFE", "endpoint RMSE")


def write_solver_report(out: Path, report: dict[str, Any]) -> str:
    """``out/solvers.json``, ``out/solvers.md`` and an RMSE plot per part of ``report``; returns the Markdown."""
    write_bytes_atomic(out / "solvers.json", json.dumps(report, indent=1).encode())
    sections = []
    for name, part in report.items():
        plot_rows(part["rows"], str(out / f"{name}_rmse.png"), f"{name}: endpoint RMSE (uniform grids; searched)")
        sections.append(f"## {name}: {part['description']}\n\nendpoint RMSE\n\n{markdown_table(part['rows'])}")
        sections.append(f"seconds per batch of {part['samples']}\n\n{markdown_table(part['rows'], 'seconds', 3)}")
    write_bytes_atomic(out / "solvers.md", ("\n\n".join(sections) + "\n").encode())
    return "\n\n".join(sections)
